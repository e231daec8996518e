"""The runs layer, between the command line (``diffexp.cli``, Hydra glue) and the core: training
a run folder (:mod:`.train`), the model store that lets a sweep train each model once
(:mod:`.store`), the no_t study (:mod:`.no_t_study`), the run records every job writes and every
reader reads (:mod:`.record`), and the run environment (logger, multirun facts; :mod:`.env`).

Functions here take a validated config dict (:func:`diffexp.config.validate_train_config`) and a
folder; none reads the command line."""
