"""The chat application: `serve run serve_apps/chat.yaml` (or `serve deploy`), or
`serve run serve_apps.app:build_app model=runs/local/finetuned_safe`.

    Chat (FastAPI ingress) --> Sampler (model, continuous batching: lamda.engine)
                           --> Ranker (model: discriminators, safety filter, 3S+Sp+I)
                           --> Toolset (calculator, translator, retrieval)
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from serve_apps.chat import Chat
from serve_apps.deployments import Ranker, Sampler, Toolset

ROOT = Path(__file__).resolve().parent.parent


def resolve(path: str | None) -> str | None:
    """Relative local paths are relative to the project root (where `make run` writes runs/)."""
    if not path or "://" in path or Path(path).is_absolute():
        return path
    return str(ROOT / path)


def yaml_options(path: Path = Path(__file__).with_name("chat.yaml")) -> dict[str, dict]:
    """Per-deployment options of a Serve config file, for deploying from Python (`serve.run`)
    with the same settings `serve run chat.yaml` applies."""
    import yaml
    app = yaml.safe_load(path.read_text())["applications"][0]
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}


def build_app(args: dict, options: dict[str, dict] | None = None) -> Application:
    """args: model (export path or s3:// URI), index (retrieval SQLite file), conversations
    (SQLite file), roles_dir, api_key, api_keys_file (one key per line), translate_url, threads
    (torch threads per model replica).
    `options`: per-deployment `.options()` by deployment name (e.g. `yaml_options()`)."""
    model = resolve(args.get("model", "runs/local/finetuned_safe"))
    index = resolve(args.get("index", "runs/local/index.sqlite"))
    threads = args.get("threads")
    options = options or {}

    def opt(deployment):
        return deployment.options(**options.get(deployment.name, {}))

    return opt(Chat).bind(
        opt(Sampler).bind(model, threads), opt(Ranker).bind(model, threads),
        opt(Toolset).bind(index, args.get("translate_url")),
        conversations=resolve(args.get("conversations", "runs/serve/conversations.sqlite")),
        roles_dir=resolve(args.get("roles_dir")), api_key=args.get("api_key"),
        api_keys_file=resolve(args.get("api_keys_file")))
