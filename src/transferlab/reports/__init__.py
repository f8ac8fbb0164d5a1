"""Views of plain records: report.html, notebook cards, matplotlib figures, the shared HTML helpers.

They render what a run folder holds (or what a caller passes); they never train or build a network.
May import: core, data."""
