"""`radium run`'s file plane: the client's file system, presented on the appliance.

- `fsproto`: the typed messages between the two ends;
- `files`: the client end, answering them from the real file system;
- `cas`: the appliance's content-addressed chunk store;
- `fs`: the appliance end, a read-only FUSE file system fed by the client.
"""
