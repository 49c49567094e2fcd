"""No network at run time: the suite runs with every non-loopback socket blocked (pytest-socket, set in
pyproject's addopts), so nothing in it can download a model or data; servers it starts are told to stay
offline too."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketConnectBlockedError


@pytest.mark.filterwarnings("ignore::UserWarning")  # pytest-socket warns as well as raising
@pytest.mark.parametrize("address", [("10.255.255.1", 80), ("1.1.1.1", 443), ("2606:4700:4700::1111", 443)])
def test_non_loopback_connections_are_blocked(address: tuple[str, int]) -> None:
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(address, timeout=1)


def test_loopback_is_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=1):
            pass


def test_a_hub_download_fails_at_once_instead_of_reaching_out() -> None:
    from transformers import AutoTokenizer

    with pytest.raises(OSError):
        AutoTokenizer.from_pretrained("bert-base-uncased")


def test_servers_are_started_offline() -> None:
    from bento import service_env

    env = service_env({})
    assert env["HF_HUB_OFFLINE"] == "1" and env["BENTOML_DO_NOT_TRACK"] == "true"
