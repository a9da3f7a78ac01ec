//! Kubernetes manifests → orch objects: the fixtures' files, tables of inputs and the objects
//! and warnings they become, bad input refused with the field named, and no input that panics.

use orch_core::model::object::{Object, ProbePort};
use orch_import::{kube, Converted, Options};

const GUESTBOOK: &str = "/work/shared/fixtures/k8s-examples-guestbook/web/guestbook";
const VOTING: &str = "/work/shared/fixtures/example-voting-app/k8s-specifications";

/// One line per object: kind, name, and what matters of it.
fn describe(o: &Object) -> String {
    let md = o.metadata();
    let kind = md
        .labels
        .get(orch_import::KUBE_KIND_LABEL)
        .cloned()
        .unwrap_or_default();
    match o {
        Object::Service(s) => {
            let t = &s.spec.template;
            let ports: Vec<String> = t
                .ports
                .iter()
                .map(|p| format!("{}:{}", p.name, p.port.unwrap_or(0)))
                .collect();
            format!(
                "Service {} ({kind}) replicas={} image={} ports=[{}]",
                md.name,
                s.spec.replicas,
                t.image.as_deref().unwrap_or("-"),
                ports.join(",")
            )
        }
        Object::Route(r) => {
            let sel: Vec<String> = r
                .spec
                .selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let ports: Vec<String> = r
                .spec
                .ports
                .iter()
                .map(|p| {
                    let target = match &p.target_port {
                        None => String::new(),
                        Some(ProbePort::Number(n)) => format!("->{n}"),
                        Some(ProbePort::Name(n)) => format!("->{n}"),
                    };
                    let node = p.node_port.map(|n| format!("@{n}")).unwrap_or_default();
                    format!("{}:{}{target}{node}", p.name, p.port)
                })
                .collect();
            format!(
                "Route {} ({kind}) selector={{{}}} ports=[{}]{}{}",
                md.name,
                sel.join(","),
                ports.join(","),
                if r.spec.headless { " headless" } else { "" },
                if r.spec.node_ports { " nodePorts" } else { "" }
            )
        }
        other => format!("{} {} ({kind})", other.kind(), md.name),
    }
}

fn warnings(c: &Converted) -> Vec<String> {
    c.warnings
        .iter()
        .map(|w| format!("{}: {}: {}", w.document, w.path, w.message))
        .collect()
}

fn convert(text: &str) -> Converted {
    match kube::convert("test.yaml", text, &Options::default()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn refuse(text: &str) -> String {
    match kube::convert("test.yaml", text, &Options::default()) {
        Ok(c) => panic!("converted: {:?}", c.objects),
        Err(e) => e.to_string(),
    }
}

const NO_PODS: &str = "spec.selector: selects no pod template in this input (namespace default): the route has no endpoints until replicas with these labels run";
const RC: &str = "kind: ReplicationController: converted as a Deployment would be (an orch service); a template change rolls its replicas, where a ReplicationController leaves running pods as they are";

const FRONTEND_ROUTE: &str =
    "Route frontend (Service) selector={app=guestbook,tier=frontend} ports=[:80] nodePorts";
const FRONTEND: &str = "Service frontend (Deployment) replicas=3 image=gcr.io/google-samples/gb-frontend:v5 ports=[tcp-80:80]";
const MASTER_ROUTE: &str =
    "Route redis-master (Service) selector={app=redis,role=master,tier=backend} ports=[:6379->6379]";
const MASTER: &str = "Service redis-master (Deployment) replicas=1 image=registry.k8s.io/redis:e2e ports=[tcp-6379:6379]";
const REPLICA_ROUTE: &str =
    "Route redis-replica (Service) selector={app=redis,role=replica,tier=backend} ports=[:6379]";
const REPLICA: &str = "Service redis-replica (Deployment) replicas=2 image=gcr.io/google_samples/gb-redisslave:v1 ports=[tcp-6379:6379]";

/// Every fixture file: the objects it becomes and exactly the warnings it gives.
fn fixtures() -> Vec<(String, Vec<&'static str>, Vec<String>)> {
    let g = |f: &str| format!("{GUESTBOOK}/{f}");
    let v = |f: &str| format!("{VOTING}/{f}");
    let none = Vec::<String>::new;
    let no_pods = || vec![format!("1: {NO_PODS}")];
    vec![
        (g("frontend-deployment.yaml"), vec![FRONTEND], none()),
        (g("frontend-service.yaml"), vec![FRONTEND_ROUTE], no_pods()),
        (g("redis-master-deployment.yaml"), vec![MASTER], none()),
        (g("redis-master-service.yaml"), vec![MASTER_ROUTE], no_pods()),
        (
            g("redis-replica-deployment.yaml"),
            vec![REPLICA],
            none(),
        ),
        (g("redis-replica-service.yaml"), vec![REPLICA_ROUTE], no_pods()),
        (g("all-in-one/frontend.yaml"), vec![FRONTEND_ROUTE, FRONTEND], none()),
        (
            g("all-in-one/redis-replica.yaml"),
            vec![REPLICA_ROUTE, REPLICA],
            none(),
        ),
        (
            g("all-in-one/guestbook-all-in-one.yaml"),
            vec![MASTER_ROUTE, MASTER, REPLICA_ROUTE, REPLICA, FRONTEND_ROUTE, FRONTEND],
            none(),
        ),
        (
            g("legacy/frontend-controller.yaml"),
            vec!["Service frontend (ReplicationController) replicas=3 image=gcr.io/google_samples/gb-frontend:v4 ports=[tcp-80:80]"],
            vec![format!("1: {RC}")],
        ),
        (
            g("legacy/redis-master-controller.yaml"),
            vec!["Service redis-master (ReplicationController) replicas=1 image=registry.k8s.io/redis:e2e ports=[tcp-6379:6379]"],
            vec![format!("1: {RC}")],
        ),
        (
            g("legacy/redis-replica-controller.yaml"),
            vec!["Service redis-replica (ReplicationController) replicas=2 image=gcr.io/google_samples/gb-redisslave:v1 ports=[tcp-6379:6379]"],
            vec![format!("1: {RC}")],
        ),
        (
            v("db-deployment.yaml"),
            vec!["Service db (Deployment) replicas=1 image=postgres:15-alpine ports=[postgres:5432]"],
            none(),
        ),
        (
            v("db-service.yaml"),
            vec!["Route db (Service) selector={app=db} ports=[db-service:5432->5432]"],
            no_pods(),
        ),
        (
            v("redis-deployment.yaml"),
            vec!["Service redis (Deployment) replicas=1 image=redis:alpine ports=[redis:6379]"],
            none(),
        ),
        (
            v("redis-service.yaml"),
            vec!["Route redis (Service) selector={app=redis} ports=[redis-service:6379->6379]"],
            no_pods(),
        ),
        (
            v("result-deployment.yaml"),
            vec!["Service result (Deployment) replicas=1 image=dockersamples/examplevotingapp_result ports=[result:80]"],
            none(),
        ),
        (
            v("result-service.yaml"),
            vec!["Route result (Service) selector={app=result} ports=[result-service:8081->80@31001] nodePorts"],
            no_pods(),
        ),
        (
            v("vote-deployment.yaml"),
            vec!["Service vote (Deployment) replicas=1 image=dockersamples/examplevotingapp_vote ports=[vote:80]"],
            none(),
        ),
        (
            v("vote-service.yaml"),
            vec!["Route vote (Service) selector={app=vote} ports=[vote-service:8080->80@31000] nodePorts"],
            no_pods(),
        ),
        (
            v("worker-deployment.yaml"),
            vec!["Service worker (Deployment) replicas=1 image=dockersamples/examplevotingapp_worker ports=[]"],
            none(),
        ),
    ]
}

fn read(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("skipped: {path}: {e} (the shared fixtures are not here)");
            None
        }
    }
}

#[test]
fn every_fixture_converts_with_the_warnings_expected() {
    for (path, objects, expected) in fixtures() {
        let Some(text) = read(&path) else { continue };
        let c = match kube::convert(&path, &text, &Options::default()) {
            Ok(c) => c,
            Err(e) => panic!("{path}: {e}"),
        };
        let got: Vec<String> = c.objects.iter().map(describe).collect();
        assert_eq!(got, objects, "{path}");
        assert_eq!(warnings(&c), expected, "{path}");
        assert!(c.warnings.iter().all(|w| w.source == path));
        assert_eq!(c.origins.len(), c.objects.len());
    }
}

#[test]
fn a_whole_app_converted_together_has_every_route_selecting_a_template() {
    for dir in [GUESTBOOK, VOTING] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            eprintln!("skipped: {dir}");
            continue;
        };
        let mut files: Vec<(String, String)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                (p.display().to_string(), text)
            })
            .collect();
        files.sort();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let c = kube::convert_all(&refs, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.warnings.is_empty(), "{dir}: {:?}", warnings(&c));
        let routes = c
            .objects
            .iter()
            .filter(|o| matches!(o, Object::Route(_)))
            .count();
        let services = c
            .objects
            .iter()
            .filter(|o| matches!(o, Object::Service(_)))
            .count();
        assert_eq!(
            (routes, services),
            if dir == GUESTBOOK { (3, 3) } else { (4, 5) }
        );
    }
}

#[test]
fn the_all_in_one_file_twice_is_an_error_naming_both_places() {
    let Some(text) = read(&format!("{GUESTBOOK}/all-in-one/frontend.yaml")) else {
        return;
    };
    let e = kube::convert_all(&[("a.yaml", &text), ("b.yaml", &text)], &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("b.yaml: document 1: metadata.name: invalid value \"frontend\": Service/frontend in namespace default is defined twice (also in a.yaml document 1)"),
        "{e}"
    );
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {team: a}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 2, maxUnavailable: "50%"}
  progressDeadlineSeconds: 120
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      terminationGracePeriodSeconds: 20
      nodeSelector: {disk: ssd}
      securityContext: {runAsUser: 1000, runAsGroup: 2000}
      tolerations:
      - {key: dedicated, operator: Equal, value: web, effect: NoSchedule}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: zone, operator: In, values: [a, b]}
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 50
            podAffinityTerm:
              labelSelector: {matchLabels: {app: web}}
              topologyKey: zone
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
      initContainers:
      - name: migrate
        image: busybox
        command: [sh, -c, "echo migrate"]
        env: [{name: STAGE, value: init}]
      containers:
      - name: web
        image: nginx:1.27
        imagePullPolicy: Always
        command: [nginx]
        args: [-g, daemon off;]
        workingDir: /srv
        env:
        - {name: MODE, value: prod}
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
        - name: LEVEL
          valueFrom: {configMapKeyRef: {name: settings, key: level, optional: true}}
        envFrom:
        - {configMapRef: {name: settings}, prefix: CFG_}
        - secretRef: {name: db, optional: true}
        ports:
        - {containerPort: 8080, name: http}
        - {containerPort: 9090, protocol: UDP, hostPort: 19090}
        resources:
          requests: {cpu: 250m, memory: 64Mi}
          limits: {cpu: "1", memory: 128Mi}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          initialDelaySeconds: 5
          periodSeconds: 3
          timeoutSeconds: 2
          successThreshold: 2
          failureThreshold: 4
        livenessProbe:
          tcpSocket: {port: 8080}
        startupProbe:
          exec: {command: [cat, /tmp/ready]}
        securityContext:
          runAsUser: 1001
          readOnlyRootFilesystem: true
          capabilities: {add: [NET_ADMIN], drop: [ALL]}
        volumeMounts:
        - {name: cache, mountPath: /cache}
        - {name: conf, mountPath: /etc/nginx/conf.d}
        - {name: tls, mountPath: /etc/tls, readOnly: true}
        - {name: logs, mountPath: /var/log/nginx}
        - {name: data, mountPath: /data}
        - {name: one, mountPath: /etc/one}
      volumes:
      - {name: cache, emptyDir: {}}
      - {name: conf, configMap: {name: nginx-conf}}
      - {name: tls, secret: {secretName: tls}}
      - {name: logs, hostPath: {path: /var/log/web}}
      - {name: data, persistentVolumeClaim: {claimName: web-data}}
      - name: one
        configMap:
          name: nginx-conf
          items: [{key: main, path: nginx.conf}]
"#;

#[test]
fn a_deployment_maps_field_by_field() {
    let c = convert(DEPLOYMENT);
    assert_eq!(
        warnings(&c),
        [
            "1: spec.template.spec.containers[0].resources.requests.cpu: orch reserves and limits the same cpu: the limit 1 is used for both (the request 250m is not)",
            "1: spec.template.spec.containers[0].resources.requests.memory: orch reserves and limits the same memory: the limit 128Mi is used for both (the request 64Mi is not)",
        ]
    );
    let Object::Service(s) = &c.objects[0] else {
        panic!("{:?}", c.objects)
    };
    let v = serde_json::to_value(&**s).unwrap();
    let want: serde_json::Value = serde_json::json!({
        "metadata": {
            "name": "web", "namespace": "shop",
            "labels": {"app": "web", "orch.dev/kube-kind": "Deployment"},
            "annotations": {"team": "a"}
        },
        "spec": {
            "replicas": 4,
            "headless": true,
            "template": {
                "labels": {"app": "web", "tier": "front"},
                "image": "nginx:1.27",
                "imagePullPolicy": "Always",
                "command": ["nginx"],
                "args": ["-g", "daemon off;"],
                "workingDir": "/srv",
                "env": [
                    {"name": "MODE", "value": "prod"},
                    {"name": "PASSWORD", "valueFrom": {"secret": "db", "key": "password"}},
                    {"name": "LEVEL", "valueFrom": {"config": "settings", "key": "level", "optional": true}}
                ],
                "envFrom": [
                    {"config": "settings", "prefix": "CFG_"},
                    {"secret": "db", "optional": true}
                ],
                "ports": [
                    {"name": "http", "port": 8080},
                    {"name": "udp-9090", "port": 9090, "protocol": "UDP", "hostPort": 19090}
                ],
                "resources": {"cpu": "1", "memory": "128Mi"},
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "initialDelay": "5s", "period": "3s", "timeout": "2s",
                    "successThreshold": 2, "failureThreshold": 4
                },
                "livenessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}},
                "user": "1001:2000",
                "readOnlyRootFilesystem": true,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "stopGracePeriod": "20s",
                "mounts": [
                    {"path": "/cache", "tmpfs": true},
                    {"path": "/etc/nginx/conf.d", "config": "nginx-conf"},
                    {"path": "/etc/tls", "readOnly": true, "secret": "tls"},
                    {"path": "/var/log/nginx", "hostPath": "/var/log/web"},
                    {"path": "/data", "volume": "web-data"},
                    {"path": "/etc/one/nginx.conf", "config": "nginx-conf", "key": "main"}
                ],
                "init": [{
                    "name": "migrate", "image": "busybox",
                    "command": ["sh", "-c", "echo migrate"],
                    "env": [{"name": "STAGE", "value": "init"}]
                }]
            },
            "placement": {
                "nodeSelector": {"disk": "ssd"},
                "nodeAffinity": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
                "tolerations": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}],
                "antiAffinity": {
                    "required": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "orch.dev/node"}],
                    "preferred": [{"weight": 50, "labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]
                },
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]
            },
            "update": {"maxSurge": 2, "maxUnavailable": "50%", "progressDeadline": "2m", "autoRollback": false}
        },
        "status": serde_json::to_value(&s.status).unwrap()
    });
    assert_eq!(v, want, "{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(c.origins[0].what, "Deployment/web");
    assert_eq!(c.origins[0].document, 1);
}

/// (input, the warnings it gives: `document: path: message`).
fn warning_table() -> Vec<(String, Vec<&'static str>)> {
    let pod = |extra_pod: &str, extra_container: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n{extra_pod}      containers:\n      - name: web\n        image: nginx\n{extra_container}"
        )
    };
    vec![
        (
            pod("", "        lifecycle: {preStop: {exec: {command: [sleep, '5']}}}\n"),
            vec!["1: spec.template.spec.containers[0].lifecycle: ignored: orch runs no postStart/preStop hooks (stop sends the stop signal, then SIGKILL after the grace period)"],
        ),
        (
            pod("", "        frobnicate: true\n"),
            vec!["1: spec.template.spec.containers[0].frobnicate: unknown field: ignored (orch does not know it)"],
        ),
        (
            pod("      serviceAccountName: web\n", ""),
            vec!["1: spec.template.spec.serviceAccountName: ignored: service accounts have no effect in orch"],
        ),
        (
            pod("", "        resources: {requests: {memory: 64Mi, nvidia.com/gpu: 1}, limits: {memory: 128Mi}}\n"),
            vec![
                "1: spec.template.spec.containers[0].resources.requests.nvidia.com/gpu: ignored: orch reserves and limits cpu and memory only",
                "1: spec.template.spec.containers[0].resources.requests.memory: orch reserves and limits the same memory: the limit 128Mi is used for both (the request 64Mi is not)",
            ],
        ),
        (
            pod(
                "      affinity:\n        nodeAffinity:\n          preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: a, operator: Exists}]}}]\n",
                "",
            ),
            vec!["1: spec.template.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution: ignored: orch has no preferred node affinity (only required terms are honoured)"],
        ),
        (
            pod("      tolerations: [{operator: Exists, effect: NoExecute, tolerationSeconds: 30}]\n", ""),
            vec![
                "1: spec.template.spec.tolerations[0].effect: orch taints do not evict (NoSchedule and PreferNoSchedule only): the toleration tolerates every effect",
                "1: spec.template.spec.tolerations[0].tolerationSeconds: ignored: orch taints do not evict",
            ],
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, uid: abc}\nspec:\n  strategy: {type: Recreate}\n  minReadySeconds: 5\n  revisionHistoryLimit: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\nstatus: {replicas: 1}\n".to_string(),
            vec![
                "1: metadata.uid: ignored: set by the cluster",
                "1: status: ignored: set by the cluster",
                "1: spec.strategy.type: Recreate: mapped to maxSurge 0, maxUnavailable 100% (old replicas stop as new ones are created; orch does not wait for every old one to be gone first)",
                "1: spec.minReadySeconds: ignored: orch counts a replica available as soon as it is Ready",
                "1: spec.revisionHistoryLimit: ignored: orch keeps the last 10 revisions",
            ],
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: LoadBalancer\n  sessionAffinity: ClientIP\n  externalTrafficPolicy: Local\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http, appProtocol: http}]\n".to_string(),
            vec![
                "1: spec.type: LoadBalancer: orch has no load balancer; every node listens on the node ports instead (as NodePort)",
                "1: spec.ports[0].appProtocol: ignored: orch balances connections whatever they carry",
                "1: spec.sessionAffinity: ClientIP: orch has no session affinity; each connection goes to any ready endpoint",
                "1: spec.externalTrafficPolicy: Local: orch balances over every ready endpoint of the cluster (Cluster)",
                "1: spec.selector: selects no pod template in this input (namespace default): the route has no endpoints until replicas with these labels run",
            ],
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\nspec:\n  serviceName: nodes\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}, annotations: {a: b}}\n    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80, name: web}]}]}\n".to_string(),
            vec![
                "1: spec.ports[0].targetPort: no pod template it selects has a port named \"http\": connections to those replicas go nowhere",
                "2: spec.template.metadata.annotations: ignored: orch replicas carry no annotations (the object's own are kept)",
                "2: spec.serviceName: no Service \"nodes\" in this input: its replicas' own DNS names (NAME-0.nodes) need that headless Service",
            ],
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n".to_string(),
            vec![
                "1: kind: Namespace shop: no object; namespaces exist in orch once something is in them",
                "2: kind: ServiceAccount web: no object; service accounts have no effect in orch",
                "3: kind: PersistentVolumeClaim data: no object; the claim name is a node-local orch volume created on first use (size, access modes and storage class are not honoured)",
            ],
        ),
    ]
}

#[test]
fn fields_orch_does_not_honour_are_warnings_naming_them() {
    for (text, want) in warning_table() {
        let c = convert(&text);
        assert_eq!(warnings(&c), want, "{text}");
    }
}

#[test]
fn strict_makes_every_warning_an_error() {
    let text = &warning_table()[0].0;
    let strict = Options {
        strict: true,
        ..Options::default()
    };
    let e = kube::convert("x.yaml", text, &strict)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.yaml: document 1: spec.template.spec.containers[0].lifecycle: ignored: orch runs no postStart/preStop hooks") && e.contains("(strict: warnings are errors)"),
        "{e}"
    );
}

#[test]
fn services_become_routes() {
    let c = convert(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: db}\n  spec:\n    clusterIP: None\n    selector: {app: db}\n    ports: [{name: pg, port: 5432, targetPort: postgres}, {name: metrics, port: 9187, protocol: UDP}]\n- apiVersion: apps/v1\n  kind: StatefulSet\n  metadata: {name: db}\n  spec:\n    serviceName: db\n    replicas: 3\n    podManagementPolicy: Parallel\n    selector: {matchLabels: {app: db}}\n    template:\n      metadata: {labels: {app: db}}\n      spec:\n        containers:\n        - name: pg\n          image: postgres\n          ports: [{name: postgres, containerPort: 5432}]\n          volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]\n    volumeClaimTemplates:\n    - metadata: {name: data}\n      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n",
    );
    let got: Vec<String> = c.objects.iter().map(describe).collect();
    assert_eq!(
        got,
        [
            "Route db (Service) selector={app=db} ports=[pg:5432->postgres,metrics:9187] headless",
            "Service db (StatefulSet) replicas=3 image=postgres ports=[postgres:5432]",
        ]
    );
    let Object::Service(s) = &c.objects[1] else {
        panic!()
    };
    assert_eq!(s.spec.mode, orch_core::model::object::ServiceMode::Ordered);
    assert!(s.spec.headless);
    let m = &s.spec.template.mounts[0];
    assert_eq!((m.volume.as_deref(), m.per_replica), (Some("data"), true));
    assert_eq!(
        warnings(&c),
        [
            "1: items[1].spec.volumeClaimTemplates[0].spec: not honoured: each replica gets a node-local orch volume CLAIM-REPLICA (e.g. data-web-0), created on first use; size, access modes and storage class do not apply",
            "1: items[1].spec.podManagementPolicy: Parallel: orch starts an ordered service's replicas in order, each once the one before is Ready",
        ]
    );
}

#[test]
fn daemon_sets_jobs_cron_jobs_configs_and_secrets() {
    let c = convert(concat!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec: {hostNetwork: true, containers: [{name: a, image: busybox}]}\n---\n",
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  completions: 5\n  parallelism: 2\n  backoffLimit: 4\n  activeDeadlineSeconds: 100\n  template:\n    spec: {restartPolicy: Never, containers: [{name: pi, image: perl, command: [perl, -e, print]}]}\n---\n",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: hello}\nspec:\n  schedule: '*/5 * * * *'\n  timeZone: Europe/Berlin\n  concurrencyPolicy: Forbid\n  suspend: true\n  startingDeadlineSeconds: 60\n  successfulJobsHistoryLimit: 2\n  failedJobsHistoryLimit: 0\n  jobTemplate:\n    spec:\n      backoffLimit: 1\n      template:\n        spec: {restartPolicy: OnFailure, containers: [{name: h, image: busybox, args: [date]}]}\n---\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: debug}\n---\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: c2VjcmV0, user: YWRtaW4=}\nstringData: {user: root}\n",
    ));
    assert_eq!(warnings(&c), Vec::<String>::new());
    let [Object::Service(ds), Object::Job(job), Object::CronJob(cron), Object::Config(cfg), Object::Secret(sec)] =
        &c.objects[..]
    else {
        panic!("{:?}", c.objects)
    };
    assert_eq!(ds.spec.mode, orch_core::model::object::ServiceMode::Global);
    assert!(ds.spec.template.host_network);
    let js = &job.spec;
    assert_eq!(
        (
            js.completions,
            js.parallelism,
            js.backoff_limit,
            js.active_deadline.map(|s| s.0.as_secs())
        ),
        (5, 2, 4, Some(100))
    );
    let cs = &cron.spec;
    assert_eq!(cs.schedule, "*/5 * * * *");
    assert_eq!(cs.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(
        cs.concurrency_policy,
        orch_core::model::object::ConcurrencyPolicy::Forbid
    );
    assert!(cs.suspend);
    assert_eq!(cs.starting_deadline.map(|s| s.0.as_secs()), Some(60));
    assert_eq!(
        (
            cs.successful_jobs_history_limit,
            cs.failed_jobs_history_limit
        ),
        (2, 0)
    );
    assert_eq!(cs.job.backoff_limit, 1);
    assert_eq!(cs.job.template.args, ["date"]);
    assert_eq!(cfg.data["level"], "debug");
    assert_eq!(sec.data["password"], "secret");
    assert_eq!(sec.data["user"], "root", "stringData wins");
    for o in &c.objects {
        assert!(o
            .metadata()
            .labels
            .contains_key(orch_import::KUBE_KIND_LABEL));
    }
}

#[test]
fn bad_input_is_refused_naming_file_document_and_field() {
    let deploy = |containers: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ok}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: {containers}\n")
    };
    for (text, want) in [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".to_string(),
            "test.yaml: document 1: kind: invalid value \"Pod\": orch does not convert this kind; supported: v1 Namespace, v1 Service, v1 ConfigMap, v1 Secret, v1 ServiceAccount, v1 PersistentVolumeClaim, v1 ReplicationController, v1 List, apps/v1 Deployment, apps/v1 StatefulSet, apps/v1 DaemonSet, batch/v1 Job, batch/v1 CronJob",
        ),
        (
            "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: p}\n".to_string(),
            "test.yaml: document 1: apiVersion: invalid value \"extensions/v1beta1\": Deployment is converted from apiVersion apps/v1",
        ),
        (
            deploy("[{name: a, image: nginx}, {name: b, image: redis}]"),
            "test.yaml: document 2: spec.template.spec.containers: invalid value 2 containers: orch runs one container per replica",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'not base64!'}\n".to_string(),
            "test.yaml: document 1: data[\"password\"]: invalid value \"not base64!\": is not valid base64",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {blob: //79}\n".to_string(),
            "test.yaml: document 1: data[\"blob\"]: invalid value (binary): decodes to bytes that are not UTF-8 text",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n".to_string(),
            "test.yaml: document 1: spec.selector: a Service must select pods by their labels",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {}, ports: [{port: 80}]}\n".to_string(),
            "test.yaml: document 1: spec.selector: a Service must select pods by their labels",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: My_Config}\n".to_string(),
            "test.yaml: document 1: metadata.name: invalid value \"My_Config\": a DNS-1123 label must consist of lower case alphanumeric characters",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {selector: {a: b}, ports: [{port: 80}]}\n".to_string(),
            "test.yaml: document 1: metadata.name: invalid value \"1web\": a Service's name is a DNS-1035 label",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 70000}]}\n".to_string(),
            "test.yaml: document 1: spec.ports[0].port: invalid value 70000: must be a whole number from 1 to 65535",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: NodePort, selector: {a: b}, ports: [{port: 80, nodePort: 80}]}\n".to_string(),
            "test.yaml: document 1: spec.ports[0].nodePort: invalid value 80: must be from 30000 to 32767",
        ),
        (
            deploy("[{name: a, image: nginx, ports: [{containerPort: 0}]}]"),
            "test.yaml: document 2: spec.template.spec.containers[0].ports[0].containerPort: invalid value 0: must be a whole number from 1 to 65535",
        ),
        (
            deploy("[{name: a, image: nginx, ports: [{containerPort: 80, name: HTTP_PORT}]}]"),
            "test.yaml: document 2: spec.template.spec.containers[0].ports[0].name: invalid value \"HTTP_PORT\": must contain only lower case alphanumeric characters or '-'",
        ),
        (
            deploy("[{name: a, image: nginx, volumeMounts: [{name: nope, mountPath: /x}]}]"),
            "test.yaml: document 2: spec.template.spec.containers[0].volumeMounts[0].name: invalid value \"nope\": no volume of the pod",
        ),
        (
            deploy("[{name: a, image: 'Not An Image'}]"),
            "test.yaml: document 2: spec.template.spec.containers[0].image: invalid value \"Not An Image\": an image reference looks like",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: other}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: a, image: nginx}]}\n".to_string(),
            "test.yaml: document 1: spec.selector: does not select the pod template's labels",
        ),
        (
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec: {containers: [{name: a, image: nginx}]}\n".to_string(),
            "test.yaml: document 1: spec.template.spec.restartPolicy: invalid value \"Always\": a job runs replicas to completion",
        ),
        (
            deploy("[{name: a, image: nginx, env: [{name: '1X', value: a}]}]"),
            "test.yaml: document 2: spec.template.spec.containers[0].env[0].name: invalid value \"1X\": a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (as the orch Deployment/web's spec.template.env[0].name)",
        ),
        (
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec: {containers: [{name: a, image: nginx}]}\n".to_string(),
            "test.yaml: document 1: spec.jobTemplate.spec.template.spec.restartPolicy: invalid value \"Always\": a job runs replicas to completion",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: ExternalName, externalName: example.com}\n".to_string(),
            "test.yaml: document 1: spec.type: invalid value \"ExternalName\": orch has no external names",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 80}, {port: 81}]}\n".to_string(),
            "test.yaml: document 1: spec.ports[0].name: a Service with several ports must name each one",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 80, protocol: SCTP}]}\n".to_string(),
            "test.yaml: document 1: spec.ports[0].protocol: invalid value \"SCTP\": must be TCP or UDP",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 80, targetPort: Web_Port}]}\n".to_string(),
            "test.yaml: document 1: spec.ports[0].targetPort: invalid value \"Web_Port\": must be a port number from 1 to 65535 or a container port's name",
        ),
        (
            "apiVersion: orch/v1\nkind: Service\nmetadata: {name: s}\n".to_string(),
            "test.yaml: document 1: apiVersion: invalid value \"orch/v1\": an orch manifest, not a Kubernetes one",
        ),
        (
            "- just\n- a list\n".to_string(),
            "test.yaml: document 1: (document): invalid value [\"just\",\"a list\"]: must be a mapping, not a list",
        ),
        (
            "a: [unclosed\n".to_string(),
            "test.yaml: invalid YAML: line",
        ),
    ] {
        let e = refuse(&text);
        assert!(e.contains(want), "{text}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn ports_without_names_are_named_by_protocol_and_number() {
    let c = convert("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: dns}\nspec:\n  selector: {matchLabels: {app: dns}}\n  template:\n    metadata: {labels: {app: dns}}\n    spec:\n      containers:\n      - name: dns\n        image: coredns\n        ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53}]\n");
    assert_eq!(
        c.objects.iter().map(describe).collect::<Vec<_>>(),
        ["Service dns (Deployment) replicas=1 image=coredns ports=[udp-53:53,tcp-53:53]"]
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// Field names the converter reads, so that arbitrary values reach deep paths.
    const KEYS: &[&str] = &[
        "template",
        "spec",
        "metadata",
        "labels",
        "containers",
        "initContainers",
        "image",
        "ports",
        "containerPort",
        "name",
        "protocol",
        "hostPort",
        "env",
        "value",
        "valueFrom",
        "secretKeyRef",
        "configMapKeyRef",
        "fieldRef",
        "fieldPath",
        "key",
        "optional",
        "envFrom",
        "configMapRef",
        "secretRef",
        "prefix",
        "resources",
        "limits",
        "requests",
        "cpu",
        "memory",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "httpGet",
        "tcpSocket",
        "exec",
        "grpc",
        "port",
        "path",
        "command",
        "args",
        "periodSeconds",
        "timeoutSeconds",
        "securityContext",
        "runAsUser",
        "runAsGroup",
        "capabilities",
        "add",
        "drop",
        "volumeMounts",
        "mountPath",
        "subPath",
        "volumes",
        "emptyDir",
        "configMap",
        "secret",
        "secretName",
        "items",
        "hostPath",
        "persistentVolumeClaim",
        "claimName",
        "selector",
        "matchLabels",
        "matchExpressions",
        "operator",
        "values",
        "affinity",
        "nodeAffinity",
        "podAffinity",
        "podAntiAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
        "topologyKey",
        "labelSelector",
        "tolerations",
        "effect",
        "topologySpreadConstraints",
        "maxSkew",
        "strategy",
        "type",
        "rollingUpdate",
        "maxSurge",
        "maxUnavailable",
        "replicas",
        "volumeClaimTemplates",
        "updateStrategy",
        "jobTemplate",
        "schedule",
        "targetPort",
        "nodePort",
        "clusterIP",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "stringData",
    ];

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (0i64..70000).prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-zA-Z0-9%=/._ -]{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "TCP",
                "None",
                "Always",
                "Recreate",
                "OnDelete",
                "50%",
                "http",
                "In",
                "NodePort",
                "c2VjcmV0",
                "/x",
                "kubernetes.io/hostname"
            ])
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6)
                    .prop_map(|kv| {
                        serde_json::Value::Object(
                            kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        )
                    }),
            ]
        })
    }

    fn fixture_texts() -> Vec<String> {
        let mut out: Vec<String> = fixtures()
            .into_iter()
            .filter_map(|(p, _, _)| std::fs::read_to_string(p).ok())
            .collect();
        out.push(DEPLOYMENT.to_string());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn yaml_ish_text(text in "[ -~\n]{0,300}") {
            let _ = kube::convert("p.yaml", &text, &Options::default());
        }

        #[test]
        fn yaml_ish_structure(
            keys in proptest::collection::vec(
                prop::sample::select(vec![
                    "apiVersion: v1", "apiVersion: apps/v1", "apiVersion: batch/v1", "kind: Service",
                    "kind: Deployment", "kind: Secret", "kind: List", "kind: CronJob", "kind: StatefulSet",
                    "metadata: {name: a}", "spec: {}", "spec: {template: {spec: {containers: [{image: x}]}}}",
                    "spec: {selector: {a: b}, ports: [{port: 1}]}", "data: {a: '@@'}", "items: [{}]", "---",
                    "spec: {template: 3}", "spec: []", "spec: {replicas: -1}", "  - x", "metadata: null",
                ]),
                0..12,
            )
        ) {
            let _ = kube::convert("p.yaml", &keys.join("\n"), &Options::default());
        }

        #[test]
        fn documents_of_known_kinds_with_arbitrary_fields(
            kind in prop::sample::select(kube::SUPPORTED.to_vec()),
            spec in value(),
            extra in value(),
        ) {
            let doc = serde_json::json!({
                "apiVersion": kind.0,
                "kind": kind.1,
                "metadata": {"name": "a", "labels": {"app": "a"}},
                "spec": spec,
                "data": extra.clone(),
                "items": [extra],
            });
            let text = serde_json::to_string(&doc).unwrap();
            let _ = kube::convert("p.json", &text, &Options::default());
        }

        #[test]
        fn mutated_fixtures(seed in 0usize..1000, cut in 0usize..4000, byte in 0u8..128, op in 0u8..3) {
            let texts = fixture_texts();
            let text = &texts[seed % texts.len()];
            let mut bytes = text.clone().into_bytes();
            let at = cut % bytes.len().max(1);
            match op {
                0 => bytes.truncate(at),
                1 => { if at < bytes.len() { bytes[at] = byte; } }
                _ => bytes.insert(at.min(bytes.len()), byte),
            }
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            let _ = kube::convert("p.yaml", &mutated, &Options { strict: op == 2, ..Options::default() });
        }
    }
}

#[test]
fn the_namespace_is_the_manifests_else_the_options_else_default() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: shop}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
    let ns = |o: &Options| -> Vec<String> {
        kube::convert("n.yaml", text, o)
            .unwrap()
            .objects
            .iter()
            .map(|o| o.metadata().namespace.clone())
            .collect()
    };
    assert_eq!(ns(&Options::default()), ["shop", "default"]);
    let o = Options {
        namespace: Some("dev".into()),
        ..Options::default()
    };
    assert_eq!(ns(&o), ["shop", "dev"]);
}

#[test]
fn an_error_inside_a_list_names_the_item() {
    let e = refuse("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: ok}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: web}\n  spec:\n    selector: {matchLabels: {app: web}}\n    template:\n      metadata: {labels: {app: web, 'bad key!': x}}\n      spec: {containers: [{name: a, image: nginx}]}\n");
    assert!(
        e.contains("test.yaml: document 1: items[1].spec.template.metadata.labels[\"bad key!\"]: invalid value \"bad key!\""),
        "{e}"
    );
}

#[test]
fn documents_parsed_by_the_caller_keep_their_numbers() {
    let doc: serde_json::Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}
    });
    let c =
        kube::convert_documents(&[("mixed.yaml", vec![(3, doc)])], &Options::default()).unwrap();
    assert_eq!(
        warnings(&c),
        ["3: kind: ServiceAccount web: no object; service accounts have no effect in orch"]
    );
    assert_eq!(c.warnings[0].source, "mixed.yaml");
}
