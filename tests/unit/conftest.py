"""The fast tier: the app's parts in this process (no server, no subprocess), on real
SQLite files in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app import Accounts, Hub, Metrics, Settings, Storage


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings as a test wants them: nothing from the environment or a .env file."""
    return Settings(_env_file=None, data_dir=tmp_path, sse_token="root-token-for-tests")


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    storage = Storage(settings.database, settings.history_size)
    await storage.open()
    yield storage
    await storage.close()


@pytest.fixture
async def accounts(settings: Settings, storage: Storage) -> Accounts:
    announced: list[None] = []

    async def announce() -> None:
        announced.append(None)

    accounts = Accounts(settings, storage, announce)
    await accounts.start()
    accounts.announced = announced  # the test can see what was announced
    return accounts


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    storage = Storage(settings.database, settings.history_size)

    async def accounts_changed() -> None:
        pass

    hub = Hub(settings, Metrics(), storage, accounts_changed)
    await hub.start()
    yield hub
    await hub.close()
    await storage.close()
