"""One function per paper figure/table; each returns pandas DataFrames with provenance, no plotting.

* :mod:`.variants` - the five methods (original, lrd, rank_opt, freezing, combined) as models.
* :mod:`.throughput` - Table 1 (train / inference images/s).
* :mod:`.decomposition_time` - Table 2 (decomposition time, plain and with rank optimization).
* :mod:`.accuracy` - Tables 3 and 4 (accuracy after fine-tuning, ResNet and ViT).
* :mod:`.fig3` - Fig. 3 (sequential vs regular freezing convergence).
"""
