"""Benchmarking: compare, the suites, the benchmark page's tables and claims, plots, report, the
compiled-resource inspector, the analytic traffic model."""
