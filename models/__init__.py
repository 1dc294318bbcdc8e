"""freshrec's models. Importing the package makes OpenMP's idle threads sleep rather than spin
(``OMP_WAIT_POLICY=PASSIVE``, unless the environment sets it), before LightGBM loads its OpenMP
runtime: LightGBM's fit and predict use every core, and on a 2-core machine with other work
running, spinning threads made a 2-thread fit slower than one thread (bench: 31.7 s spinning,
23.2 s passive, 39.0 s on one thread, with two busy processes beside it; idle: 15.2, 14.1, 26.5)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
