"""`radium bench`: the Radium paper's CNN benchmark, local against remote (docs/bench.md).

- `cases`: the models, cases and arithmetic (no torch);
- `models`: the CNNs in PyTorch, as tf_cnn_benchmarks builds them for CIFAR-10;
- `train`: one case trained where it runs (here, or on the appliance through `radium run`);
- `link`: the far end of the link measurement;
- `runner`: the cases run on both sides, the link measured, the record;
- `report`: the table, the chart, two records compared;
- `cli`: the command's options and what it prints.
"""
