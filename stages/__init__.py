"""EmotiveLens pipeline stages: one module per stage, each with a ``main(argv=None)``."""
