"""The ground floor every chapter stands on; it imports nothing else of `lab`.

* `checks`   — argument checks that raise ValueError / TypeError naming the argument, its value and what is allowed;
* `atomic`   — atomic writes (a temporary file, then ``os.replace``);
* `records`  — provenance (device, versions, date, command), ``results/`` and `load_results`;
* `timing`   — the one timer, `time_ms` (CUDA events on a GPU, ``perf_counter`` on a CPU);
* `ceilings` — a device's memory bandwidth and peak matmul rate, measured or datasheet, labelled;
* `runtime`  — the device, seeds, Triton's mode;
* `stats`    — paired intervals and the verbs that follow them;
* `report`   — a notebook's metrics record (``lab.metrics.json``) and the text of its comparisons.
"""
