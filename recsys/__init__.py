"""recsys: industrial recommender-systems toolkit."""
__version__ = "0.1.0"
