"""The console's views: one table each over the estate's snapshot (`base.TableView`)."""

from .appliances import AppliancesView
from .clients import ClientsView
from .hosts import HostsView
from .log import LogView
from .sessions import SessionsView

__all__ = ["AppliancesView", "ClientsView", "HostsView", "LogView", "SessionsView"]
