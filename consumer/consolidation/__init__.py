"""Consolidation: carrying the deletions' effect through the model, then resting.

A batch re-solves exactly the rows its deletions touched; their neighbours' solves read
them, so the change spreads. A forgetting cycle (cycle.py) follows it with an active set
(unlearn_core/active_set.py): rounds of exact re-solves of the rows whose inputs moved by
more than a tolerance, until the deleted pairs have settled (unlearn_core/settle.py);
then the touched rows once more, and one commit of what moved (worker.py). With no
deletion there is no cycle: a loaded model is never swept unless asked (sweeps.py).
"""
