"""The fake UIS's end-to-end analytics: sales funnels, deal contacts, responsibles, deal history.

Data API methods: ``create.sales_funnel`` / ``update.sales_funnel`` (``ext_id``, ``name``,
``stages`` with ``success``, ``failed`` and ``in_process``; a single stage or a list is
accepted for success/failed, the vendor's page being vague), ``get.sales_funnel``,
``create.deal_contacts`` (``contacts``: ``ext_id``, ``name``, ``phone_numbers``, ``emails``;
a known ext_id is updated), ``create.deal_employees`` (``employees``: ``ext_id``, ``name``),
``upload.deals_history`` (``deals``: rows of one deal's history) and ``get.deals_history``.

A deal is its ``ext_id``; its history is keyed by (stage, ``modified_stage_date_time``), so a
row sent again replaces itself (the reading implemented: UIS's page does not say). A refused
request stores nothing; errors are UIS's envelope with ``data.field`` naming the culprit.
``refuse`` maps a deal ext_id to a mnemonic to refuse it with (a rule the fake does not model).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from tracker.simulators.jsonrpc import bad_param

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_ROWS = 1000  # per request (unconfirmed: UIS's page gives no number)
DEAL_FIELDS = {"ext_id", "name", "created_date_time", "modified_date_time",
               "modified_stage_date_time", "closed_date_time", "sales_funnel_ext_id",
               "stage_ext_id", "main_contact_ext_id", "contact_ext_ids", "responsible_ext_id",
               "price", "amount", "comments", "communication_id", "communication_type",
               "user_fields"}
COMMUNICATION_TYPES = ("call", "chat", "offline_message", "goal")


class DealsBook:
    """What the fake account holds of a CRM's deals."""

    def __init__(self) -> None:
        self.funnels: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.responsibles: dict[str, dict[str, Any]] = {}
        self.deals: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.uploads: list[list[dict[str, Any]]] = []  # accepted upload.deals_history requests
        self.refuse: dict[str, str] = {}

    def methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"create.sales_funnel": self._create_funnel,
                "update.sales_funnel": self._update_funnel,
                "get.sales_funnel": self._get_funnel,
                "create.deal_contacts": self._contacts,
                "create.deal_employees": self._employees,
                "upload.deals_history": self._upload,
                "get.deals_history": self._get_history}

    def history(self, ext_id: str) -> list[dict[str, Any]]:
        """A deal's rows, in the order the stages were reached."""
        rows = self.deals.get(str(ext_id), {})
        return [row for _, row in sorted(rows.items(), key=lambda item: item[0][1])]

    # -- structure -------------------------------------------------------------------------

    def _funnel(self, params: dict[str, Any]) -> dict[str, Any]:
        ext_id, name, stages = params.get("ext_id"), params.get("name"), params.get("stages")
        if not isinstance(ext_id, str) or not ext_id:
            raise bad_param("ext_id", ext_id, "required_parameter_missing")
        if not isinstance(name, str) or not name.strip():
            raise bad_param("name", name, "required_parameter_missing")
        if not isinstance(stages, dict):
            raise bad_param("stages", stages, "data_type_error")
        kinds: dict[str, str] = {}
        for kind in ("success", "failed", "in_process"):
            value = stages.get(kind)
            items = value if isinstance(value, list) else [value]
            if kind != "in_process" and value is None:
                raise bad_param(f"stages.{kind}", None, "required_parameter_missing")
            for index, stage in enumerate(items):
                path = f"stages.{kind}.{index}"
                if not isinstance(stage, dict) or not isinstance(stage.get("ext_id"), str) \
                        or not isinstance(stage.get("name"), str) or not stage["name"]:
                    raise bad_param(path, stage, "invalid_parameter_value")
                if stage["ext_id"] in kinds:
                    raise bad_param(f"{path}.ext_id", stage["ext_id"], "duplicate_value")
                kinds[stage["ext_id"]] = kind
        return {"ext_id": ext_id, "name": name, "stages": stages, "kinds": kinds}

    def _create_funnel(self, params: dict[str, Any]) -> dict[str, Any]:
        funnel = self._funnel(params)
        if funnel["ext_id"] in self.funnels:
            raise bad_param("ext_id", funnel["ext_id"], "entity_already_exists")
        self.funnels[funnel["ext_id"]] = funnel
        return {"data": {"ext_id": funnel["ext_id"]}}

    def _update_funnel(self, params: dict[str, Any]) -> dict[str, Any]:
        funnel = self._funnel(params)
        if funnel["ext_id"] not in self.funnels:
            raise bad_param("ext_id", funnel["ext_id"], "entity_not_found")
        self.funnels[funnel["ext_id"]] = funnel
        return {"data": {"ext_id": funnel["ext_id"]}}

    def _get_funnel(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [{"ext_id": f["ext_id"], "name": f["name"], "stages": f["stages"]}
                for f in self.funnels.values()]
        return {"data": rows, "metadata": {"total_items": len(rows)}}

    def _items(self, params: dict[str, Any], name: str) -> list[dict[str, Any]]:
        items = params.get(name)
        if not isinstance(items, list) or not items:
            raise bad_param(name, items, "required_parameter_missing")
        if len(items) > MAX_ROWS:
            raise bad_param(name, len(items), "limit_of_items_exceeded")
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("ext_id"), str) \
                    or not item["ext_id"]:
                raise bad_param(f"{name}.{index}.ext_id", item, "required_parameter_missing")
        return items

    def _contacts(self, params: dict[str, Any]) -> dict[str, Any]:
        items = self._items(params, "contacts")
        for index, item in enumerate(items):
            for key in ("phone_numbers", "emails"):
                value = item.get(key, [])
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise bad_param(f"contacts.{index}.{key}", value, "data_type_error")
            if not item.get("phone_numbers") and not item.get("emails"):
                raise bad_param(f"contacts.{index}.phone_numbers", None,
                                "required_parameter_missing")
        for item in items:
            self.contacts[item["ext_id"]] = dict(item)
        return {"data": [{"ext_id": i["ext_id"]} for i in items]}

    def _employees(self, params: dict[str, Any]) -> dict[str, Any]:
        items = self._items(params, "employees")
        for index, item in enumerate(items):
            if not isinstance(item.get("name"), str) or not item["name"].strip():
                raise bad_param(f"employees.{index}.name", item.get("name"),
                                "required_parameter_missing")
        for item in items:
            self.responsibles[item["ext_id"]] = dict(item)
        return {"data": [{"ext_id": i["ext_id"]} for i in items]}

    # -- deals -----------------------------------------------------------------------------

    def _upload(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = self._items(params, "deals")
        for index, row in enumerate(rows):
            self._check_row(index, row)
        for row in rows:
            key = (row["stage_ext_id"], row.get("modified_stage_date_time")
                   or row["created_date_time"])
            self.deals.setdefault(row["ext_id"], {})[key] = dict(row)
        self.uploads.append([dict(r) for r in rows])
        return {"data": {"count": len(rows)}}

    def _check_row(self, index: int, row: dict[str, Any]) -> None:
        path = f"deals.{index}"
        for key in row:
            if key not in DEAL_FIELDS:
                raise bad_param(f"{path}.{key}", row[key], "parameter_is_not_allowed")
        if row["ext_id"] in self.refuse:
            raise bad_param(f"{path}.ext_id", row["ext_id"], self.refuse[row["ext_id"]])
        for key in ("created_date_time", "modified_date_time", "modified_stage_date_time",
                    "closed_date_time"):
            if key == "created_date_time" or key in row:
                try:
                    datetime.strptime(row.get(key), TIME_FORMAT)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise bad_param(f"{path}.{key}", row.get(key)) from None
        funnel = self.funnels.get(row.get("sales_funnel_ext_id"))  # type: ignore[arg-type]
        if funnel is None:
            raise bad_param(f"{path}.sales_funnel_ext_id", row.get("sales_funnel_ext_id"),
                            "entity_not_found")
        if row.get("stage_ext_id") not in funnel["kinds"]:
            raise bad_param(f"{path}.stage_ext_id", row.get("stage_ext_id"), "entity_not_found")
        for key in ("price", "amount"):
            if key in row and (not isinstance(row[key], int | float) or row[key] < 0):
                raise bad_param(f"{path}.{key}", row[key])
        contacts = [row["main_contact_ext_id"]] if "main_contact_ext_id" in row else []
        contacts += row.get("contact_ext_ids") or []
        for ext_id in contacts:
            if ext_id not in self.contacts:
                raise bad_param(f"{path}.main_contact_ext_id", ext_id, "entity_not_found")
        if "responsible_ext_id" in row and row["responsible_ext_id"] not in self.responsibles:
            raise bad_param(f"{path}.responsible_ext_id", row["responsible_ext_id"],
                            "entity_not_found")
        if ("communication_id" in row) != ("communication_type" in row):
            raise bad_param(f"{path}.communication_type", row.get("communication_type"),
                            "required_parameter_missing")
        if "communication_type" in row and row["communication_type"] not in COMMUNICATION_TYPES:
            raise bad_param(f"{path}.communication_type", row["communication_type"])
        if not contacts and "communication_id" not in row:
            # The report needs a contact with contact data or a communication.
            raise bad_param(f"{path}.main_contact_ext_id", None, "required_parameter_missing")

    def _get_history(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [r for ext_id in self.deals for r in self.history(ext_id)]
        return {"data": rows, "metadata": {"total_items": len(rows)}}

