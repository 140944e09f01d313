"""Typed dependencies: routes reach the service and settings through these, not globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.services.defined_polls import DefinedPolls
from app.services.polling_service import PollingService


def get_service(request: Request) -> PollingService:
    service: PollingService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_defined(request: Request) -> DefinedPolls:
    polls: DefinedPolls = request.app.state.defined
    return polls


ServiceDep = Annotated[PollingService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DefinedDep = Annotated[DefinedPolls, Depends(get_defined)]
