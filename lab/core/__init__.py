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

from lab.core.atomic import atomic_write, atomic_write_json
from lab.core.ceilings import (Ceilings, Datasheet, ceiling_sizes, datasheet_ceilings, datasheet_key, device_ceilings,
                               measure_ceilings, measured_ceilings)
from lab.core.checks import (check_block, check_choice, check_device, check_divisor, check_float_dtype,
                             check_float_tensor, check_fraction, check_group, check_int, check_list, check_matrix,
                             check_number, check_numbers, check_path, check_power_of_two, check_tensor)
from lab.core.records import (add_seed, check_out_dir, device_kind, device_name, load_results, provenance, seed_rows,
                              seeded_sums)
from lab.core.report import (below_text, percent, read, record, record_comparison, record_comparisons, record_spread,
                             report_path)
from lab.core.runtime import get_device, has_triton_gpu, runs_triton, seed_everything, triton_interpret
from lab.core.stats import (compare, compare_sums, document_sums, holm, paired_ratio, paired_t_p, seed_spread,
                            t_quantile_975, verdict, verdicts)
from lab.core.timing import check_then_time, time_interleaved, time_ms

__all__ = [
    "atomic_write", "atomic_write_json",
    "Ceilings", "Datasheet", "ceiling_sizes", "datasheet_ceilings", "datasheet_key", "device_ceilings",
    "measure_ceilings", "measured_ceilings",
    "check_block", "check_choice", "check_device", "check_divisor", "check_float_dtype", "check_float_tensor",
    "check_fraction", "check_group", "check_int", "check_list", "check_matrix", "check_number", "check_numbers", "check_path",
    "check_power_of_two", "check_tensor",
    "add_seed", "check_out_dir", "device_kind", "device_name", "load_results", "provenance", "seed_rows", "seeded_sums",
    "below_text", "percent", "read", "record", "record_comparison", "record_comparisons", "record_spread",
    "report_path",
    "get_device", "has_triton_gpu", "runs_triton", "seed_everything", "triton_interpret",
    "compare", "compare_sums", "document_sums", "holm", "paired_ratio", "paired_t_p", "seed_spread", "t_quantile_975", "verdict",
    "verdicts",
    "check_then_time", "time_interleaved", "time_ms",
]
