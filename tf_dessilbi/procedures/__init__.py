"""Procedures built from training runs on the shared masks.

* `ticket_search.TicketSearch` — Continuous Sparsification rounds, rewinding, the ticket;
* `early_tickets` — supp(Γ) snapshots of a DessiLBI run and their retraining;
* `imp.iterative_magnitude_pruning` (Frankle & Carbin 2019, rewinding:
  Frankle et al. 2020), with `sanity.run_sanity_checks` (Ma et al. 2021);
* `greedy.greedy_forward_selection` (Ye et al., ICML 2020).

IMP and greedy selection also expose the CLI hook ``run(config, workdir, data, strategy)``.
"""

from tf_dessilbi.procedures import greedy
from tf_dessilbi.procedures import imp
from tf_dessilbi.procedures import sanity

__all__ = ["greedy", "imp", "sanity"]
