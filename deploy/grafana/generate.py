#!/usr/bin/env python3
"""Writes the fxbridge Grafana dashboard (deploy/grafana/fxbridge.json) to stdout.

Edit the panels here rather than the JSON, so ids and grid positions stay
consistent; then: python3 deploy/grafana/generate.py > deploy/grafana/fxbridge.json
tests/grafana.rs checks the result against a running bridge's /metrics.
"""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}
T = 'job=~"$job", instance=~"$instance"'
R = T + ', route=~"$route"'
S = T + ', session=~"$session"'
RI = "$__rate_interval"

panels = []
next_id = [1]
y = [0]

def nid():
    i = next_id[0]
    next_id[0] += 1
    return i

def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
        t["format"] = "time_series"
    else:
        t["range"] = True
    return t

def targets(pairs, instant=False):
    return [target(e, l, chr(ord("A") + i), instant) for i, (e, l) in enumerate(pairs)]

def timeseries(title, desc, pairs, unit, x, w, h=8, bars=False, stack=False, decimals=None, extra_defaults=None):
    custom = {
        "axisBorderShow": False, "axisCenteredZero": False, "axisColorMode": "text",
        "axisLabel": "", "axisPlacement": "auto", "barAlignment": 0,
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10, "gradientMode": "none",
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "insertNulls": False, "lineInterpolation": "linear", "lineWidth": 1,
        "pointSize": 4, "scaleDistribution": {"type": "linear"}, "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "off"},
    }
    defaults = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "mappings": [],
        "min": 0,
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
        "unit": unit,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if extra_defaults:
        defaults.update(extra_defaults)
    return {
        "datasource": DS,
        "description": desc,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "id": nid(),
        "options": {
            "legend": {"calcs": ["mean", "max", "lastNotNull"], "displayMode": "table", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(pairs),
        "title": title,
        "type": "timeseries",
    }

UPDOWN = [{"options": {"0": {"color": "red", "index": 0, "text": "down"}, "1": {"color": "green", "index": 1, "text": "up"}}, "type": "value"}]
UPDOWN_STEPS = {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}

def stat(title, desc, expr, unit, x, w, mappings=None, steps=None, instant=True, h=4):
    return {
        "datasource": DS,
        "description": desc,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": mappings or [],
                "thresholds": steps or {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "unit": unit,
            },
            "overrides": [],
        },
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "id": nid(),
        "options": {
            "colorMode": "background", "graphMode": "none", "justifyMode": "auto",
            "orientation": "auto", "percentChangeColorMode": "standard",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False, "textMode": "value_and_name", "wideLayout": True,
        },
        "targets": [target(expr, title, "A", instant)],
        "title": title,
        "type": "stat",
    }

def state_timeline(title, desc, pairs, x, w, h=6):
    return {
        "datasource": DS,
        "description": desc,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "custom": {"fillOpacity": 80, "hideFrom": {"legend": False, "tooltip": False, "viz": False}, "insertNulls": False, "lineWidth": 0, "spanNulls": False},
                "mappings": UPDOWN,
                "thresholds": UPDOWN_STEPS,
                "unit": "none",
            },
            "overrides": [],
        },
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "id": nid(),
        "options": {
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "mergeValues": True, "rowHeight": 0.8, "showValue": "never",
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": targets(pairs),
        "title": title,
        "type": "state-timeline",
    }

def bargauge(title, desc, expr, legend, unit, x, w, h=8):
    return {
        "datasource": DS,
        "description": desc,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": [],
                "min": 0,
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}]},
                "unit": unit,
                "decimals": 0,
            },
            "overrides": [],
        },
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "id": nid(),
        "options": {
            "displayMode": "basic", "maxVizHeight": 300, "minVizHeight": 16, "minVizWidth": 8,
            "namePlacement": "auto", "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True, "sizing": "auto", "valueMode": "color",
        },
        "targets": [target(expr, legend, "A", instant=True)],
        "title": title,
        "type": "bargauge",
    }

def row(title, collapsed=False):
    r = {"collapsed": collapsed, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "id": nid(), "panels": [], "title": title, "type": "row"}
    y[0] += 1
    return r

def quantiles(hist, sel, by=""):
    lbl = f"le{', ' + by if by else ''}"
    return [
        (f"histogram_quantile({q}, sum by ({lbl}) (rate(fxbridge_{hist}_bucket{{{sel}}}[{RI}])))", name)
        for q, name in [("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")]
    ]

# ---- Overview
panels.append(row("Overview"))
panels.append(stat("Ready", "fxbridge_ready: every subscriber session connected with its subscriptions in place (the lowest of the selected instances).",
    f"min(fxbridge_ready{{{T}}})", "none", 0, 4, UPDOWN, UPDOWN_STEPS))
panels.append(stat("Broker", "fxbridge_broker_connected: every subscriber session is connected to the MQTT broker (the lowest of the selected instances).",
    f"min(fxbridge_broker_connected{{{T}}})", "none", 4, 4, UPDOWN, UPDOWN_STEPS))
panels.append(stat("Gateway", "fxbridge_gateway_connected: an HTTP/2 connection to the OpenFx gateway is open (the lowest of the selected instances).",
    f"min(fxbridge_gateway_connected{{{T}}})", "none", 8, 4, UPDOWN, UPDOWN_STEPS))
panels.append(stat("Received", "Messages received from the broker per second, all selected instances.",
    f"sum(rate(fxbridge_received_total{{{T}}}[{RI}]))", "ops", 12, 4, instant=False))
panels.append(stat("Dead letters (range)", "Messages dead-lettered by the selected routes in the dashboard's time range.",
    f"sum(increase(fxbridge_route_dead_letters_total{{{R}}}[$__range]))", "short", 16, 4,
    steps={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}]}))
panels.append(stat("Reloads rejected", "Config reloads rejected in the dashboard's time range (the running config was kept; the error is at /reload and in the log).",
    f"sum(increase(fxbridge_reload_failures_total{{{T}}}[$__range]))", "short", 20, 4,
    steps={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}))
y[0] += 4

# ---- Throughput
panels.append(row("Throughput"))
panels.append(timeseries("Messages in per route", "Messages each route took (fxbridge_route_messages_total).",
    [(f"sum by (route) (rate(fxbridge_route_messages_total{{{R}}}[{RI}]))", "{{route}}")], "ops", 0, 12))
panels.append(timeseries("Results out per route", "Successful Invoke calls and results published per route.",
    [(f"sum by (route) (rate(fxbridge_route_invoked_total{{{R}}}[{RI}]))", "{{route}} invoked"),
     (f"sum by (route) (rate(fxbridge_route_published_total{{{R}}}[{RI}]))", "{{route}} published")], "ops", 12, 12))
y[0] += 8
panels.append(timeseries("Broker: received, acknowledged, unrouted", "Bridge-wide: messages received from and acknowledged to the broker, and messages no route took (each is dead-lettered).",
    [(f"sum(rate(fxbridge_received_total{{{T}}}[{RI}]))", "received"),
     (f"sum(rate(fxbridge_acked_total{{{T}}}[{RI}]))", "acknowledged"),
     (f"sum(rate(fxbridge_unrouted_total{{{T}}}[{RI}]))", "unrouted")], "ops", 0, 12))
panels.append(timeseries("Not invoked per route", "Messages a route finished without a successful Invoke: skipped by the transform, retained messages skipped, MQTT 5 messages expired before Invoke.",
    [(f"sum by (route) (rate(fxbridge_route_skipped_total{{{R}}}[{RI}]))", "{{route}} skipped by transform"),
     (f"sum by (route) (rate(fxbridge_route_retained_skipped_total{{{R}}}[{RI}]))", "{{route}} retained skipped"),
     (f"sum by (route) (rate(fxbridge_route_expired_total{{{R}}}[{RI}]))", "{{route}} expired")], "ops", 12, 12))
y[0] += 8

# ---- Latency
panels.append(row("Latency"))
panels.append(timeseries("End-to-end latency", "Dispatch to done per message (fxbridge_route_latency_seconds), selected routes together. Buckets run from 0.5 ms to 30 s.",
    quantiles("route_latency_seconds", R), "s", 0, 12))
panels.append(timeseries("End-to-end p99 per route", "99th percentile of dispatch-to-done per route.",
    [(f"histogram_quantile(0.99, sum by (le, route) (rate(fxbridge_route_latency_seconds_bucket{{{R}}}[{RI}])))", "{{route}}")], "s", 12, 12))
y[0] += 8
panels.append(timeseries("Invoke latency", "One Invoke call to the gateway, every attempt (fxbridge_route_invoke_seconds), selected routes together.",
    quantiles("route_invoke_seconds", R), "s", 0, 12))
panels.append(timeseries("Mean latency per route", "Mean end-to-end and Invoke time per route (histogram sum over count).",
    [(f"sum by (route) (rate(fxbridge_route_latency_seconds_sum{{{R}}}[{RI}])) / sum by (route) (rate(fxbridge_route_latency_seconds_count{{{R}}}[{RI}]))", "{{route}} end to end"),
     (f"sum by (route) (rate(fxbridge_route_invoke_seconds_sum{{{R}}}[{RI}])) / sum by (route) (rate(fxbridge_route_invoke_seconds_count{{{R}}}[{RI}]))", "{{route}} Invoke")], "s", 12, 12))
y[0] += 8
panels.append(timeseries("Plugin before-invoke hook", "The transform's before-invoke hook (fxbridge_route_before_invoke_seconds), selected routes together. Empty for routes without a transform.",
    quantiles("route_before_invoke_seconds", R), "s", 0, 12))
panels.append(timeseries("Plugin after-invoke hook", "The transform's after-invoke hook (fxbridge_route_after_invoke_seconds), selected routes together. Empty for routes without a transform.",
    quantiles("route_after_invoke_seconds", R), "s", 12, 12))
y[0] += 8

# ---- Load
panels.append(row("Load and backpressure"))
panels.append(timeseries("In flight per route", "Messages each route is processing now (fxbridge_route_in_flight).",
    [(f"sum by (route) (fxbridge_route_in_flight{{{R}}})", "{{route}}")], "short", 0, 8))
panels.append(timeseries("Pending per session", "Messages a subscriber session received and has not finished (fxbridge_session_pending); at mqtt.max_pending it stops reading from the broker.",
    [(f"sum by (session) (fxbridge_session_pending{{{S}}})", "{{session}}")], "short", 8, 8))
panels.append(timeseries("Backpressure", "Times reading paused at mqtt.max_pending, and times an acknowledgement or (un)subscription waited for room in the MQTT client.",
    [(f"sum(rate(fxbridge_backpressure_total{{{T}}}[{RI}]))", "paused at max_pending"),
     (f"sum(rate(fxbridge_control_waits_total{{{T}}}[{RI}]))", "control packet waited")], "ops", 16, 8))
y[0] += 8
panels.append(timeseries("Invoke failures and retries per route", "Failed Invoke calls and retries per route. Failures that exhaust the retries are dead-lettered.",
    [(f"sum by (route) (rate(fxbridge_route_invoke_failures_total{{{R}}}[{RI}]))", "{{route}} failed"),
     (f"sum by (route) (rate(fxbridge_route_retries_total{{{R}}}[{RI}]))", "{{route}} retried")], "ops", 0, 24))
y[0] += 8

# ---- Dead letters
panels.append(row("Dead letters"))
panels.append(timeseries("Dead letters per route", "Messages dead-lettered per route, per minute (fxbridge_route_dead_letters_total).",
    [(f"sum by (route) (rate(fxbridge_route_dead_letters_total{{{R}}}[{RI}])) * 60", "{{route}}")], "opm", 0, 10))
panels.append(timeseries("Unrouted and abandoned", "Messages no route took and the broker-confirmed dead letters of them; messages left unacknowledged at shutdown (past the drain deadline); per minute.",
    [(f"sum(rate(fxbridge_unrouted_total{{{T}}}[{RI}])) * 60", "unrouted"),
     (f"sum(rate(fxbridge_unrouted_dead_letters_total{{{T}}}[{RI}])) * 60", "unrouted dead letters confirmed"),
     (f"sum by (route) (rate(fxbridge_route_abandoned_total{{{R}}}[{RI}])) * 60", "{{route}} abandoned at shutdown")], "opm", 10, 8))
panels.append(bargauge("Dead letters per route (range)", "Dead letters per route over the dashboard's time range.",
    f"sort_desc(sum by (route) (increase(fxbridge_route_dead_letters_total{{{R}}}[$__range])))", "{{route}}", "short", 18, 6))
y[0] += 8
panels.append(timeseries("Dead letters by kind", "Dead letters per minute by error_kind (gateway, transform-before, transform-after, publish, oversize, result-too-large, output-refused, output-limit, payload-format-invalid); the last reasons are on the status page.",
    [(f"sum by (route, kind) (rate(fxbridge_route_dead_letters_by_kind_total{{{R}}}[{RI}])) * 60", "{{route}} {{kind}}")], "opm", 0, 24))
y[0] += 8

# ---- Plugins
panels.append(row("Plugins"))
panels.append(timeseries("Plugin errors by kind", "Failed transform calls per minute by kind: guest_error, trap, timeout, memory_limit, output_limit, fuel_exhausted, configure_failed, instantiation_failed.",
    [(f"sum by (kind) (rate(fxbridge_plugin_errors_total{{{R}}}[{RI}])) * 60", "{{kind}}")], "opm", 0, 12))
panels.append(timeseries("Plugin traps and timeouts per route", "Transform calls that trapped or ran past transform.limits.timeout, per route, per minute.",
    [(f'sum by (route) (rate(fxbridge_plugin_errors_total{{{R}, kind="trap"}}[{RI}])) * 60', "{{route}} trap"),
     (f'sum by (route) (rate(fxbridge_plugin_errors_total{{{R}, kind="timeout"}}[{RI}])) * 60', "{{route}} timeout")], "opm", 12, 12))
y[0] += 8
panels.append(timeseries("Plugin calls per route", "Transform hook calls per route (both hooks).",
    [(f"sum by (route) (rate(fxbridge_plugin_calls_total{{{R}}}[{RI}]))", "{{route}}")], "ops", 0, 12))
panels.append(timeseries("Mean plugin call time", "Mean time of one transform hook call per route.",
    [(f"sum by (route) (rate(fxbridge_plugin_call_microseconds_sum{{{R}}}[{RI}])) / sum by (route) (rate(fxbridge_plugin_calls_total{{{R}}}[{RI}]))", "{{route}}")], "µs", 12, 12))
y[0] += 8
def plugin_details():
  return (timeseries("Plugin instances and log budget", "Plugin instances created and configured, and plugin log lines dropped over the route's log budget, per minute.",
    [(f"sum by (route) (rate(fxbridge_plugin_instances_created_total{{{R}}}[{RI}])) * 60", "{{route}} instances created"),
     (f"sum by (route) (rate(fxbridge_plugin_log_suppressed_total{{{R}}}[{RI}])) * 60", "{{route}} log lines suppressed")], "opm", 0, 12))

# ---- Connections and reloads
panels.append(row("Connections and reloads"))
panels.append(state_timeline("Subscriber sessions", "fxbridge_session_connected per session (serving=false: a session being retired after a reload).",
    [(f"max by (session, serving) (fxbridge_session_connected{{{S}}})", "{{session}} (serving={{serving}})")], 0, 12))
panels.append(state_timeline("Broker and gateway per instance", "fxbridge_broker_connected and fxbridge_gateway_connected per instance.",
    [(f"max by (instance) (fxbridge_broker_connected{{{T}}})", "{{instance}} broker"),
     (f"max by (instance) (fxbridge_gateway_connected{{{T}}})", "{{instance}} gateway")], 12, 12))
y[0] += 6
panels.append(timeseries("Gateway connections", "HTTP/2 connections to the gateway established, and connection attempts that failed (refused, timed out, TLS, handshake), per interval.",
    [(f"sum(increase(fxbridge_gateway_connects_total{{{T}}}[{RI}]))", "connected"),
     (f"sum(increase(fxbridge_gateway_connect_failures_total{{{T}}}[{RI}]))", "failed")], "short", 0, 12, bars=True))
panels.append(timeseries("Config reloads", "Config reloads applied and rejected (a rejected reload keeps the running config), per interval.",
    [(f"sum(increase(fxbridge_reloads_total{{{T}}}[{RI}]))", "applied"),
     (f"sum(increase(fxbridge_reload_failures_total{{{T}}}[{RI}]))", "rejected")], "short", 12, 12, bars=True,
    extra_defaults=None))
y[0] += 8

# ---- Details: collapsed, its panels nested in the row.
details = row("Details", collapsed=True)
panels.append(details)
details["panels"].append(plugin_details())
details["panels"].append(timeseries("Subscriptions and redeliveries", "Subscriptions the broker refused; redeliveries of messages processed before a reconnect, acknowledged without processing again; waiting copies dropped because the broker redelivered them.",
    [(f"sum(increase(fxbridge_subscriptions_refused_total{{{T}}}[{RI}]))", "subscriptions refused"),
     (f"sum(increase(fxbridge_redeliveries_already_done_total{{{T}}}[{RI}]))", "redeliveries already done"),
     (f"sum by (route) (increase(fxbridge_route_superseded_total{{{R}}}[{RI}]))", "{{route}} superseded")], "short", 12, 12, bars=True))
y[0] += 8

# Colour the "rejected" series red in the reloads panel.
for p in panels:
    if p.get("title") == "Config reloads":
        p["fieldConfig"]["overrides"] = [
            {"matcher": {"id": "byName", "options": "rejected"}, "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}]},
            {"matcher": {"id": "byName", "options": "applied"}, "properties": [{"id": "color", "value": {"fixedColor": "green", "mode": "fixed"}}]},
        ]
    if p.get("title") == "Gateway connections":
        p["fieldConfig"]["overrides"] = [
            {"matcher": {"id": "byName", "options": "failed"}, "properties": [{"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}]},
        ]

def qvar(name, label, query, multi=True):
    return {
        "allValue": ".*",
        "current": {},
        "datasource": DS,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }

dashboard = {
    "annotations": {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "blue", "name": "Config reloaded",
         "expr": f"changes(fxbridge_reloads_total{{{T}}}[2m]) > 0", "step": "1m",
         "titleFormat": "Config reloaded", "textFormat": "{{instance}}", "useValueForTime": False},
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "red", "name": "Reload rejected",
         "expr": f"changes(fxbridge_reload_failures_total{{{T}}}[2m]) > 0", "step": "1m",
         "titleFormat": "Config reload rejected", "textFormat": "{{instance}}: see /reload", "useValueForTime": False},
    ]},
    "description": "fxbridge (MQTT to OpenFx): throughput, latency, dead letters, plugins, connections and reloads, from the bridge's /metrics.",
    "editable": True,
    "fiscalYearStartMonth": 0,
    "graphTooltip": 1,
    "links": [],
    "liveNow": False,
    "panels": panels,
    "refresh": "30s",
    "schemaVersion": 39,
    "tags": ["fxbridge", "mqtt", "openfx"],
    "templating": {"list": [
        {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False, "name": "datasource",
         "options": [], "query": "prometheus", "refresh": 1, "regex": "", "skipUrlSync": False, "type": "datasource"},
        qvar("job", "Job", "label_values(fxbridge_ready, job)"),
        qvar("instance", "Instance", 'label_values(fxbridge_ready{job=~"$job"}, instance)'),
        qvar("route", "Route", 'label_values(fxbridge_route_messages_total{job=~"$job", instance=~"$instance"}, route)'),
        qvar("session", "Session", 'label_values(fxbridge_session_pending{job=~"$job", instance=~"$instance"}, session)'),
    ]},
    "time": {"from": "now-1h", "to": "now"},
    "timepicker": {},
    "timezone": "",
    "title": "fxbridge",
    "uid": "fxbridge",
    "version": 1,
    "weekStart": "",
}

print(json.dumps(dashboard, indent=2, ensure_ascii=False))
