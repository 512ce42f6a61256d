"""``cifarctl tune``: a recipe for any model, found with Optuna in the time given, on held-out training images.

- ``space``: what a trial may change, as Optuna suggests it
- ``lr_range``: the lr range test that bounds the lr searched
- ``study``: a study's spec, its storage (a journal file, or a database for many machines), its time spent
- ``search``: the trials, each an ordinary run on the training images less the held-out ones
- ``recheck``: the best few configurations trained again with new seeds; the best mean is the study's best
- ``files``: study.json, trials.csv, best.toml (any trial's recipe), trials.png
- ``session``: a study opened (started, resumed, joined), its files, and --confirm on the test set

Optuna is the ``tune`` extra (``pip install 'cifarctl[tune]'``), imported only here, when a study is used.
"""
