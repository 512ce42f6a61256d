"""A trained model put to use: ``predict`` on your own pictures (``inference``) and ``export`` to other formats."""
