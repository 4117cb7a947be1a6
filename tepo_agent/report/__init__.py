"""Seeing a store: the self-contained HTML report, the live dashboard and terminal colouring.

    from tepo_agent.report import SampleFilter, write_report
    write_report("tepo-agent.db", "report.html")                    # tepo-agent report
    write_report("tepo-agent.db", "one.html", SampleFilter(trajectory_id=tid))

- :mod:`.queries`: read-only SQL from a store to plain JSON data (aggregates + a bounded sample);
- :mod:`.build`: collect the data and write the page; :mod:`.page`: the HTML document;
- :mod:`.colour`: the entropy colour scale shared by page, dashboard and terminal;
- :mod:`.dashboard`: the live dashboard (``tepo-agent dashboard``, ``serve --db`` /dashboard);
- :mod:`.terminal`: per-token entropy colouring for ``run`` and ``trajectories show``.
"""

from tepo_agent.report.build import collect, write_report
from tepo_agent.report.colour import entropy_colour, scale_max
from tepo_agent.report.queries import SampleFilter
from tepo_agent.report.tokens import TokenDecoder, load_decoder

__all__ = [
    "SampleFilter",
    "TokenDecoder",
    "collect",
    "entropy_colour",
    "load_decoder",
    "scale_max",
    "write_report",
]
