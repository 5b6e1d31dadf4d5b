"""Reconcile the Gateway API objects of mproxy's GatewayClasses: read, compute (the pure modules), write.

Level-triggered: any change to a GatewayClass, Gateway, route, ReferenceGrant, a backend Service, a
certificateRef Secret or a connector Deployment reconciles every mproxy Gateway again (one lock: route
statuses are shared by the Gateways a route names). Problems become status conditions, never exceptions;
API failures propagate.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mproxy.config.errors import ConfigError
from mproxy_operator import kube
from mproxy_operator.connector import build_connector
from mproxy_operator.gateway_api import addresses, names
from mproxy_operator.gateway_api.listeners import CertInputs, Listener, certificate_refs, parse_listeners
from mproxy_operator.gateway_api.params import ClassParams, ParamsError, parse_params
from mproxy_operator.gateway_api.render import (
    HTTP_PROTOCOLS,
    HTTP_ROUTERS,
    certs_secret,
    connector_spec,
    gateway_config,
    with_certs,
)
from mproxy_operator.gateway_api.routes import (
    MAX_RULES,
    Binding,
    HttpBinding,
    Inputs,
    age,
    attach,
    parent_status,
    refs_gateway,
)
from mproxy_operator.gateway_api.status import class_status, gateway_status
from mproxy_operator.kube import Kube, KubeError
from mproxy_operator.podspec import SidecarDefaults
from mproxy_operator.reconcile import SPEC_HASH, _apply_config_map
from mproxy_operator.render import config_map, digest, owner_reference

log = logging.getLogger("mproxy_operator.gateway_api")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class GatewayAPI:
    kube: Kube
    defaults: SidecarDefaults
    cluster_domain: str = "cluster.local"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Services some mproxy route names: a change to one of them reconciles again.
    backends: set[tuple[str, str]] = field(default_factory=set)
    # Secrets some mproxy Gateway's HTTPS listener names in certificateRefs: the same.
    cert_refs: set[tuple[str, str]] = field(default_factory=set)
    # The parametersRef ConfigMaps of mproxy GatewayClasses: the same.
    params_refs: set[tuple[str, str]] = field(default_factory=set)
    # The listener group each Gateway's connector ConfigMap records (addresses.GROUP_ANNOTATION), as
    # read at the start of this reconcile.
    held: dict[tuple[str, str], str] = field(default_factory=dict)

    # -- reads -------------------------------------------------------------------------------
    def _items(self, path: str) -> list[dict[str, Any]]:
        try:
            return self.kube.items(path)
        except KubeError as exc:
            if exc.not_found:  # that CRD is not installed: no such objects
                return []
            raise

    def _params(self, gwclass: Mapping[str, Any]) -> ClassParams:
        ref = (gwclass.get("spec") or {}).get("parametersRef")
        if not ref:
            raise ParamsError(
                "spec.parametersRef is required: a ConfigMap naming the edge (docs/gateway-api.md)"
            )
        if ref.get("group", "") != "" or ref.get("kind") != "ConfigMap" or not ref.get("namespace"):
            raise ParamsError(
                'spec.parametersRef must be a ConfigMap with a namespace (group "", kind ConfigMap)'
            )
        cm = self.kube.get(kube.core(ref["namespace"], "configmaps", ref["name"]))
        if cm is None:
            where = f"{ref['namespace']}/{ref['name']}"
            raise ParamsError(f"spec.parametersRef: ConfigMap {where} does not exist")
        return parse_params(cm)

    def _ours(self) -> list[dict[str, Any]]:
        return [
            c for c in self._items(names.path("gatewayclasses"))
            if (c.get("spec") or {}).get("controllerName") == names.CONTROLLER_NAME
        ]

    # -- the whole picture -------------------------------------------------------------------
    def reconcile_all(self) -> None:
        with self._lock:
            now = now_iso()
            classes = {c["metadata"]["name"]: c for c in self._ours()}
            self.params_refs = {
                (str(ref.get("namespace")), str(ref.get("name")))
                for c in classes.values() if (ref := (c.get("spec") or {}).get("parametersRef"))
            }
            params: dict[str, ClassParams | ParamsError] = {}
            for name, c in classes.items():
                try:
                    params[name] = self._params(c)
                except ParamsError as exc:
                    params[name] = exc
                self._write_class(c, params[name], now)
            gateways = [
                g for g in self._items(names.path("gateways"))
                if (g.get("spec") or {}).get("gatewayClassName") in classes
                and not (g.get("metadata") or {}).get("deletionTimestamp")
            ]
            # Oldest first, then by namespace/name: the spec's order when routes conflict (on one TCP
            # listener only the oldest is served; the connector's first matching route wins).
            routes = {
                k: sorted(self._items(names.path(p)), key=age) for k, p in names.ROUTE_PLURALS.items()
            }
            backends: set[tuple[str, str]] = set()
            self.cert_refs = set().union(*(certificate_refs(g) for g in gateways))
            assigned = self._assignments(gateways, params, classes)
            for gw in gateways:
                backends |= self._gateway(gw, params[gw["spec"]["gatewayClassName"]], routes, now,
                                          assigned.get((gw["metadata"]["namespace"], gw["metadata"]["name"])))
            self._detach_stale(gateways, routes)
            self.backends = backends

    def _assignments(
        self, gateways: list[dict[str, Any]], params: Mapping[str, ClassParams | ParamsError],
        classes: Mapping[str, Mapping[str, Any]],
    ) -> dict[tuple[str, str], addresses.Assignment]:
        """The listener group of every Gateway of a class with a pool (addresses.py); none without."""
        pooled = {c for c, p in params.items() if isinstance(p, ClassParams) and p.listener_groups}
        self.held = {}
        if not pooled:
            return {}
        self.held = held = {
            (cm["metadata"]["namespace"], labels[names.GATEWAY_LABEL]): group
            for cm in self.kube.items("/api/v1/configmaps", names.GATEWAY_LABEL)
            if (labels := cm["metadata"].get("labels") or {}).get(names.GATEWAY_LABEL)
            and (group := (cm["metadata"].get("annotations") or {}).get(addresses.GROUP_ANNOTATION))
        }
        out: dict[tuple[str, str], addresses.Assignment] = {}
        for c in sorted(pooled):
            p = params[c]
            assert isinstance(p, ClassParams)
            meta = classes[c]["metadata"]
            last = (meta.get("annotations") or {}).get(addresses.LAST_ANNOTATION)
            got = addresses.assign([g for g in gateways if g["spec"]["gatewayClassName"] == c], p.pool, held,
                                   after=last)
            given = [a.group for k, a in got.items() if a.group is not None and held.get(k) != a.group]
            if given and given[-1] != last:  # where the next free group is looked for
                self.kube.merge_patch(names.path("gatewayclasses", name=c),
                                      {"metadata": {"annotations": {addresses.LAST_ANNOTATION: given[-1]}}})
            out |= got
        return out

    def _write_class(self, c: Mapping[str, Any], p: ClassParams | ParamsError, now: str) -> None:
        gen = int(c["metadata"].get("generation") or 0)
        prev = (c.get("status") or {}).get("conditions") or []
        if isinstance(p, ParamsError):
            st = class_status(gen, False, "InvalidParameters", str(p), prev, now)
        else:
            features = names.SUPPORTED_FEATURES + (names.HTTP_FEATURES if HTTP_ROUTERS else ())
            st = class_status(gen, True, "Accepted", f"connectors dial {', '.join(p.edge_urls)}", prev, now,
                              features=features)
        self._patch_status(names.path("gatewayclasses", name=c["metadata"]["name"], sub="status"), c, st)

    def _patch_status(self, path: str, obj: Mapping[str, Any], st: Mapping[str, Any]) -> None:
        old = obj.get("status") or {}
        if all(old.get(k) == v for k, v in st.items()):
            return  # nothing new: no write, no watch event, no reconcile loop
        try:
            self.kube.merge_patch(path, {"status": st})
        except KubeError as exc:
            if not exc.not_found:
                raise

    # -- one Gateway ---------------------------------------------------------------------------
    def _gateway(
        self, gw: dict[str, Any], p: ClassParams | ParamsError,
        routes: Mapping[str, list[dict[str, Any]]], now: str,
        assignment: addresses.Assignment | None = None,
    ) -> set[tuple[str, str]]:
        """`assignment`: the Gateway's listener group when its class has a pool (addresses.py)."""
        meta = gw["metadata"]
        ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation") or 0)
        refs = sorted(certificate_refs(gw))
        secrets = {k: s for k in refs if (s := self.kube.get(kube.core(k[0], "secrets", k[1]))) is not None}
        certs = CertInputs(secrets, {n: self._items(names.reference_grants(n)) for n in {k[0] for k in refs}
                                     if n != ns})
        listeners = _pending_http(parse_listeners(gw, certs))
        previous = gw.get("status") or {}
        path = names.path("gateways", ns, name, "status")
        if isinstance(p, ParamsError):
            st = gateway_status(
                generation=gen, listeners=listeners, attached={}, addresses=(),
                accepted=(False, "InvalidParameters", f"the GatewayClass's parameters: {p}"),
                programmed=(False, "Invalid", "the GatewayClass's parameters are invalid"),
                previous=previous, now=now,
            )
            self._patch_status(path, gw, st)
            return set()

        wanted = self._backend_refs(gw, routes)
        found = {k: self.kube.get(kube.core(k[0], "services", k[1])) for k in sorted(wanted)}
        inp = Inputs(
            gateway=gw,
            listeners=listeners,
            services={k: s for k, s in found.items() if s is not None},
            grants={n: self._items(names.reference_grants(n)) for n in {k[0] for k in wanted} if n},
            namespace_labels=self._namespace_labels(listeners, routes),
            cluster_domain=self.cluster_domain,
        )
        bindings: list[Binding | HttpBinding] = []
        attached: dict[str, int] = {}
        for kind, items in routes.items():
            for route in items:
                results, got = attach(route, kind, inp)
                if not results:
                    continue
                room = MAX_RULES - len(bindings)
                if len(got) > room:
                    for r in results:
                        r.accepted = (False, "NotAllowedByListeners",
                                      f"the Gateway already serves {MAX_RULES} route rules (the limit)")
                        r.listeners.clear()
                    got = []
                bindings += got
                for r in results:
                    for lst in r.listeners:
                        attached[lst] = attached.get(lst, 0) + 1
                self._write_route_parents(route, kind, gw, results, now)

        group = assignment.group if assignment is not None else None
        no_group = addresses.programmed(assignment)
        text: str | None = None
        if no_group is not None:  # no address: no connector (one left from before would share another's)
            self._remove_connector(gw)
            programmed = no_group
        else:
            try:
                text = gateway_config(p, bindings, listeners, group).to_yaml()
            except ConfigError as exc:  # a bug of ours, or names the sidecar refuses: say so, keep the old
                programmed = (False, "Invalid", f"the connector would refuse this config: {exc}")
        if text is not None:
            served = sorted({c for lst in listeners if lst.served and lst.protocol == "HTTPS"
                             for c in lst.certificates})
            ready = self._apply_connector(gw, p, text, secrets, served, group)
            programmed = (
                (True, "Programmed", f"{ready} connector replica(s) ready")
                if ready
                else (False, "Pending", f"waiting for the connector Deployment {names.connector_name(name)}")
            )
        accepted = addresses.accepted(assignment, gw, listeners)
        st = gateway_status(
            generation=gen, listeners=listeners, attached=attached,
            addresses=p.addresses if assignment is None else assignment.addresses,
            accepted=accepted, programmed=programmed, previous=previous, now=now,
        )
        self._patch_status(path, gw, st)
        return wanted

    def _backend_refs(
        self, gw: Mapping[str, Any], routes: Mapping[str, list[dict[str, Any]]]
    ) -> set[tuple[str, str]]:
        out = set()
        for items in routes.values():
            for route in items:
                rns = route["metadata"]["namespace"]
                spec = route.get("spec") or {}
                if not any(refs_gateway(r, rns, gw) for r in spec.get("parentRefs") or []):
                    continue
                for rule in spec.get("rules") or []:
                    for ref in rule.get("backendRefs") or []:
                        if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service":
                            out.add((str(ref.get("namespace") or rns), str(ref.get("name"))))
        return out

    def _namespace_labels(
        self, listeners: list[Any], routes: Mapping[str, list[dict[str, Any]]]
    ) -> dict[str, dict[str, str]]:
        if not any(lst.allowed_from == "Selector" for lst in listeners):
            return {}
        out = {}
        for ns in {r["metadata"]["namespace"] for items in routes.values() for r in items}:
            obj = self.kube.get(kube.namespace(ns)) or {}
            out[ns] = dict((obj.get("metadata") or {}).get("labels") or {})
        return out

    def _write_route_parents(
        self, route: Mapping[str, Any], kind: str, gw: Mapping[str, Any], results: list[Any], now: str
    ) -> None:
        meta = route["metadata"]
        gen = int(meta.get("generation") or 0)
        old = (route.get("status") or {}).get("parents") or []
        keep = [e for e in old if not self._our_entry(e, meta["namespace"], gw)]
        mine = []
        for res in results:
            prev = next((e.get("conditions") or [] for e in old
                         if self._our_entry(e, meta["namespace"], gw) and e.get("parentRef") == res.ref), [])
            mine.append(parent_status(res, gen, prev, now, names.CONTROLLER_NAME))
        self._patch_status(
            names.path(names.ROUTE_PLURALS[kind], meta["namespace"], meta["name"], "status"),
            route, {"parents": [*keep, *mine]},
        )

    @staticmethod
    def _our_entry(entry: Mapping[str, Any], route_ns: str, gw: Mapping[str, Any]) -> bool:
        return entry.get("controllerName") == names.CONTROLLER_NAME and refs_gateway(
            entry.get("parentRef") or {}, route_ns, gw)

    def _detach_stale(
        self, gateways: list[dict[str, Any]], routes: Mapping[str, list[dict[str, Any]]]
    ) -> None:
        """A route that no longer names a Gateway (or whose Gateway is gone) loses our entry for it."""
        for kind, items in routes.items():
            for route in items:
                rns = route["metadata"]["namespace"]
                refs = (route.get("spec") or {}).get("parentRefs") or []
                old = (route.get("status") or {}).get("parents") or []
                keep = [
                    e for e in old
                    if e.get("controllerName") != names.CONTROLLER_NAME
                    or (e.get("parentRef") in refs
                        and any(refs_gateway(e.get("parentRef") or {}, rns, g) for g in gateways))
                ]
                if len(keep) != len(old):
                    self._patch_status(
                        names.path(names.ROUTE_PLURALS[kind], rns, route["metadata"]["name"], "status"),
                        route, {"parents": keep},
                    )

    def _apply_certs(
        self, gw: Mapping[str, Any], owner: Mapping[str, Any],
        secrets: Mapping[tuple[str, str], Mapping[str, Any]], served: list[tuple[str, str]],
    ) -> str | None:
        """The Gateway's certs Secret (the served certificateRefs as files), or none; returns its name."""
        meta = gw["metadata"]
        secret_name = names.certs_secret_name(meta["name"])
        path = kube.core(meta["namespace"], "secrets", secret_name)
        current = self.kube.get(path)
        if not served:
            if current is not None:
                self.kube.delete(path)
            return None
        desired = certs_secret(gw, owner, secrets, served)
        if current is None:
            self.kube.create(kube.core(meta["namespace"], "secrets"), desired)
        elif current.get("data") != desired["data"] or current.get("type") != desired["type"]:
            self.kube.replace(path, {**desired, "metadata": {
                **desired["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}})
        else:
            return secret_name
        log.info("gateway api: %s/%s: wrote the certificates of %s into Secret %s", meta["namespace"],
                 meta["name"], ", ".join(f"{n}/{s}" for n, s in served), secret_name)  # names, never contents
        return secret_name

    def _apply_connector(
        self, gw: Mapping[str, Any], p: ClassParams, text: str,
        secrets: Mapping[tuple[str, str], Mapping[str, Any]], served: list[tuple[str, str]],
        group: str | None = None,
    ) -> int:
        """The ConfigMap, certs Secret and Deployment, owned by the Gateway; returns the ready replicas.
        The ConfigMap records the Gateway's listener group (addresses.GROUP_ANNOTATION)."""
        meta = gw["metadata"]
        ns, name = meta["namespace"], meta["name"]
        owner = owner_reference(gw, names.API_VERSION, "Gateway")
        labels = {names.GATEWAY_LABEL: name}
        obj_name = names.connector_name(name)
        certs = self._apply_certs(gw, owner, secrets, served)
        cm = config_map(gw, text, name=obj_name, owner=owner, labels=labels)
        if group is not None:
            cm["metadata"]["annotations"][addresses.GROUP_ANNOTATION] = group
        _apply_config_map(self.kube, cm)
        if group is not None and self.held.get((ns, name)) != group:
            # _apply_config_map leaves metadata alone when the data is unchanged (a group dropped by
            # _remove_connector and assigned again): write the record itself.
            self.kube.merge_patch(kube.core(ns, "configmaps", obj_name),
                                  {"metadata": {"annotations": {addresses.GROUP_ANNOTATION: group}}})
        desired = build_connector(
            name=obj_name, namespace=ns, owner=owner,
            selector={"app.kubernetes.io/name": "mproxy", "app.kubernetes.io/component": "gateway-connector",
                      "app.kubernetes.io/instance": name, **labels},
            pod_labels={}, config_map=obj_name, spec=connector_spec(p), defaults=self.defaults,
        )
        if certs is not None:
            desired = with_certs(desired, certs)
        wanted = digest(desired)
        desired["metadata"]["annotations"] = {SPEC_HASH: wanted}
        path = kube.apps(ns, "deployments", obj_name)
        current = self.kube.get(path)
        if current is None:
            current = self.kube.create(kube.apps(ns, "deployments"), desired)
        elif ((current.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH) != wanted:
            current = self.kube.merge_patch(path, {"metadata": desired["metadata"], "spec": desired["spec"]})
        return int((current.get("status") or {}).get("readyReplicas") or 0)

    def _remove_connector(self, gw: Mapping[str, Any]) -> None:
        """A Gateway that holds no listener group runs no connector: delete its Deployment and certs
        Secret, if any, and drop the group its ConfigMap records (the ConfigMap stays: the operator may
        patch ConfigMaps, not delete them; it goes with the Gateway)."""
        meta = gw["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for path in (kube.apps(ns, "deployments", names.connector_name(name)),
                     kube.core(ns, "secrets", names.certs_secret_name(name))):
            if self.kube.delete(path):
                log.info("gateway api: %s/%s holds no listener group: deleted %s", ns, name, path)
        path = kube.core(ns, "configmaps", names.connector_name(name))
        cm = self.kube.get(path) or {}
        if addresses.GROUP_ANNOTATION in ((cm.get("metadata") or {}).get("annotations") or {}):
            self.kube.merge_patch(path, {"metadata": {"annotations": {addresses.GROUP_ANNOTATION: None}}})


def _pending_http(listeners: list[Listener]) -> list[Listener]:
    """Without the connector's HTTP router (a sidecar schema with no httpRouters), HTTP and HTTPS
    listeners are accepted and take routes, but nothing serves them: Programmed False, Pending."""
    if HTTP_ROUTERS:
        return listeners
    from dataclasses import replace

    return [
        replace(lst, problems=(*lst.problems, (
            "Programmed", "Pending", "this mproxy build's connector has no HTTP router yet (httpRouters)",
        ))) if lst.protocol in HTTP_PROTOCOLS and lst.served else lst
        for lst in listeners
    ]
