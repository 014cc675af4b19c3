"""Where Ray Data's first batch goes (issue 16)."""
import argparse, json, os, subprocess, sys, time
from dataclasses import replace
from dad_ray.config import add_config_args, config_from_args
from dad_ray.runtime import ray_session

p = argparse.ArgumentParser(); add_config_args(p, {}); p.add_argument("--root"); p.add_argument("--out")
args = p.parse_args(); cfg = config_from_args(args, default_preset="default")
out = {"loadavg_start": os.getloadavg()}
t0 = time.perf_counter()
subprocess.run([sys.executable, "-c", "import torch"], check=True); out["python_import_torch_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
subprocess.run([sys.executable, "-c", "import dad_ray.data.pipeline"], check=True); out["python_import_pipeline_s"] = time.perf_counter() - t0
data = replace(cfg.data, root=args.root, data_cpus=1.0)
t0 = time.perf_counter()
with ray_session(3, dashboard=False, log_to_driver=False):
    out["ray_init_s"] = time.perf_counter() - t0
    import ray
    from dad_ray.data import train_batches, train_dataset
    def nworkers():
        r = subprocess.run(["pgrep", "-c", "-f", "ray::"], capture_output=True, text=True)
        return int(r.stdout.strip() or 0)
    out["runs"] = []
    for rep in range(3):
        t0 = time.perf_counter(); ds = train_dataset(data, seed=0); build = time.perf_counter() - t0
        for epoch in range(2):
            w0 = nworkers()
            t0 = time.perf_counter(); it = iter(train_batches(ds, data, epoch, seed=0)); t_iter = time.perf_counter() - t0
            b = next(it); t_first = time.perf_counter() - t0
            n = b["crop_image"].shape[0]; times = [t_first]
            for b in it:
                n += b["crop_image"].shape[0]; times.append(time.perf_counter() - t0)
            out["runs"].append(dict(rep=rep, epoch=epoch, build_s=build, iter_s=t_iter, first_batch_s=t_first,
                                    second_batch_s=times[1] if len(times) > 1 else None, epoch_s=times[-1], samples=n,
                                    ray_procs_before=w0, ray_procs_after=nworkers()))
            print(out["runs"][-1], flush=True)
        out.setdefault("stats", []).append(ds.stats()[:3000])
out["loadavg_end"] = os.getloadavg()
json.dump(out, open(args.out, "w"), indent=1, default=str)
