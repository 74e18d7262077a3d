"""Experiments: kernels kept runnable beside the ladder so that measurements stay reproducible
(see README.md). Import as `experiments.<module>` with the repository root on sys.path."""
