"""``neox-acodm bench-mix``: a benchmark that can tell mixers apart (the demo is one of its presets).

Scenarios are YAML files (built-in: ``scenarios/*.yml``); every mixer of a scenario is trained
from the same init and data order for each of its paired seeds, and the report gives mean ± s.d.
and paired 95 % intervals of the primary metric against the baselines and the noise control.

Modules: :mod:`.scenario` (the YAML model), :mod:`.mixers` (the compared acodm blocks),
:mod:`.corpus`/:mod:`.tokens`/:mod:`.data` (offline text -> token streams), :mod:`.train` (the
loop), :mod:`.run` (mixers x seeds), :mod:`.stats`/:mod:`.report` (intervals, plots), :mod:`.demo`
(the demo preset) and :mod:`.commands` (the CLI).
"""
