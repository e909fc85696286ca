"""The parts of benchmarks/suite.py: settings (sections, modes, variants), plan (typed jobs and the cost model),
baselines and jobs (what a worker process runs), scheduler, and the report (report.py with one module per section:
report_accuracy, report_ablations, report_effort, report_speed, report_verdict; report_common formats numbers).

Imported with benchmarks/ on sys.path (the scripts there are not a package)."""
