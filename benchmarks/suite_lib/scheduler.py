"""Runs the jobs of a plan in worker processes, longest critical path first, and prints a line per finished job."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
import time
import traceback

from suite_lib.jobs import run_job
from suite_lib.plan import Job


def _summary(job: Job, result: dict) -> str:
    if "error" in result:
        return f"FAILED: {result['error'].splitlines()[-1]}"
    if "mean_dice" in result:
        extra = f", {result['steps']} steps" if "steps" in result else ""
        return f"Dice {result['mean_dice']:.3f}, HD95 {result['mean_hd95']:.1f}{extra}"
    if "seed_results" in result:
        return "Dice by seed " + " ".join(f"{r['mean_dice']:.3f}" for r in result["seed_results"])
    if job.kind == "effort":
        return "Dice by round " + " ".join(f"{r['mean_dice']:.3f}" for r in result["rounds"])
    if job.kind == "speed_train":
        return f"co-train {result['cotrain_step']:.2f} s/step"
    if job.kind == "speed_predict":
        return " ".join(f"{r['tile']}/{'bf16' if r['bf16'] else 'fp32'} {r['mp_per_s']:.2f} MP/s" for r in result["rows"])
    return ""


def run_jobs(jobs: list[Job], workers: int, results: dict[str, dict], started: float) -> None:
    """Run jobs in ``workers`` processes, longest critical path first, a job only after the one it needs."""
    pending = sorted(jobs, key=lambda j: -j.priority)
    total = len(pending)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        running = {}
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if job.after is not None and job.after not in results:
                    continue
                pending.remove(job)
                dependency = results.get(job.after) if job.after else None
                if dependency is not None and "error" in dependency:
                    results[job.key] = {"error": f"skipped: {job.after} failed"}
                    continue
                running[pool.submit(run_job, job.kind, job.params, dependency)] = job
            if not running:
                for job in pending:
                    results[job.key] = {"error": "skipped: its dependency was not planned"}
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    results[job.key] = future.result()
                except Exception:  # a failed run is reported, the others go on
                    results[job.key] = {"error": traceback.format_exc()}
                done = sum(1 for j in jobs if j.key in results)
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {done}/{total} {job.key}: "
                      f"{_summary(job, results[job.key])}", flush=True)


