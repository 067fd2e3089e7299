"""Fixtures: an echo upstream and a gateway in front of it, each on a free loopback port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from stillroom.guard.gateway.app import GatewayConfig, create_gateway_app
from stillroom.guard.gateway.echo import create_echo_app
from stillroom.guard.gateway.keys import KeyStore
from stillroom.serve.server import BackgroundServer


@dataclass
class Running:
    url: str
    key: str
    other_key: str
    admin_key: str
    log: Path
    app: object
    policy: Path

    @property
    def gateway(self):
        return self.app.state.gateway


@pytest.fixture(scope="module")
def echo_upstream():
    with BackgroundServer(create_echo_app()) as server:
        yield server.url


def start_gateway(tmp: Path, upstream: str, **config):
    keys = KeyStore(tmp / "keys.json")
    key = keys.add("alice", org="acme", country="FR")
    other = keys.add("bob")
    admin = keys.add_admin()
    policy = tmp / "policy.yaml"
    if not policy.exists():
        policy.write_text("on_campaign: block\nthrottle_rpm: 60\n", encoding="utf-8")
    cfg = GatewayConfig(upstream=upstream + "/v1", log=tmp / "log.db", keys=tmp / "keys.json", policy=policy, **config)
    app = create_gateway_app(cfg)
    server = BackgroundServer(app).start()
    return server, Running(server.url, key, other, admin, tmp / "log.db", app, policy)


@pytest.fixture()
def gateway(tmp_path, echo_upstream):
    server, running = start_gateway(tmp_path, echo_upstream)
    yield running
    server.stop()
