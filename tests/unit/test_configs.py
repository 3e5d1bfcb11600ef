"""The deployment files are valid for the tools that read them."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_matches_rays_schema_and_the_graph():
    from ray.serve.schema import ServeDeploySchema
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_apps/chat.yaml").read_text()))
    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_apps/chat-cluster.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "serve_apps.app:build_app"
    names = {d.name for d in app.deployments}
    assert names == {"Chat", "Sampler", "Ranker", "Toolset"}
    for d in app.deployments:
        assert d.max_queued_requests > 0 and d.autoscaling_config  # overload -> 503, autoscaled
    sampler = next(d for d in app.deployments if d.name == "Sampler")
    assert {"num_candidates", "top_k"} <= set(sampler.user_config)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus is not installed")
def test_prometheus_config_is_valid():
    out = subprocess.run(["promtool", "check", "config", str(ROOT / "cluster/prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_queries_metrics_the_code_exports():
    dash = json.loads((ROOT / "cluster/grafana-lamda.json").read_text())
    exported = set(re.findall(r'"(lamda_[a-z_]+)"', (ROOT / "serve_apps/chat.py").read_text()
                              + (ROOT / "serve_apps/deployments.py").read_text()
                              + (ROOT / "lamda/ray_train.py").read_text()))
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"ray_(lamda_[a-z_]+)", target["expr"]):
                base = re.sub(r"_(total|bucket)$", "", name)
                assert base in exported, f"{panel['title']}: {name} is not exported"


def test_cluster_launcher_config_passes_rays_schema_and_validation():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["train_gpu"]["node_config"]["InstanceType"] == "p5.48xlarge"  # 8 GPUs
    assert "serve_gpu" in types
    assert all("--metrics-export-port" in c for c in cfg["head_start_ray_commands"][1:]
               + cfg["worker_start_ray_commands"][1:])
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])


def kuberay(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"),
                                       ("rayservice.yaml", "RayService"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    m = kuberay(name)
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == kind and m["metadata"]["name"]
    spec = m["spec"]
    cluster = {"RayCluster": spec, "RayService": spec.get("rayClusterConfig"),
               "RayJob": spec.get("rayClusterSpec")}[kind]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]


def test_rayservice_serves_exactly_chat_cluster_yaml():
    embedded = kuberay("rayservice.yaml")["spec"]["serveConfigV2"]
    assert embedded == (ROOT / "serve_apps/chat-cluster.yaml").read_text()


def test_the_cluster_config_differs_from_the_local_one_only_in_where_things_live():
    local = yaml.safe_load((ROOT / "serve_apps/chat.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "serve_apps/chat-cluster.yaml").read_text())
    assert local["http_options"].pop("host") == "127.0.0.1"  # `serve run` on a laptop
    assert cluster["http_options"].pop("host") == "0.0.0.0"  # reachable from other nodes
    args = cluster["applications"][0].pop("args")
    local["applications"][0].pop("args")
    assert local == cluster
    assert args["model"].startswith("s3://") and args["index"].startswith("s3://")
    db = urlsplit(args["conversations"])
    assert db.scheme == "postgresql" and db.password is None  # secrets stay out of the file
