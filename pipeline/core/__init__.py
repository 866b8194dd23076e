"""The machinery the steps share, written once for every task.

Below the tasks (a task may import them): `params` (the common parameters and the
`Config`), `trainer` (BPTT, full and truncated), `checkpoint`, `signals`,
`distributed`, `metrics`, `plots`, `horizon`. Above the tasks (they compose a task's
parameters, run its folds or read its runs): `config`, `cli`, `tracking`, `children`,
`crossval`, `report`, `registry`, `mlproject`. tests/test_layers.py holds the rules.
"""
