"""Pieces shared by several algorithms: episode-aware buffers, the complete-episode collector, checks."""
