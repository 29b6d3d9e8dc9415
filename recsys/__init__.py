"""recsys: industrial recommender-systems toolkit."""
import logging as _logging

__version__ = "0.1.0"

# TorchRec's import trips a torch.fx deprecation warning on every process start (not actionable for users).
_logging.getLogger("torch.fx._symbolic_trace").setLevel(_logging.ERROR)
