//! Compose files as orch objects: every fixture (asserting the objects and the exact warnings
//! or errors each gives), tables of inputs, bad inputs, and a proptest that nothing panics.

use std::path::{Path, PathBuf};

use orch_core::model::object::Template;
use orch_core::Object;
use orch_import::{compose, Converted, Options, COMPOSE_PROJECT_LABEL};
use proptest::prelude::*;

const FIXTURES: &str = "/work/shared/fixtures";

fn template(o: &Object) -> Option<&Template> {
    match o {
        Object::Service(s) => Some(&s.spec.template),
        Object::Job(j) => Some(&j.spec.template),
        _ => None,
    }
}

/// One line per object: kind, name, image, ports, published ports, dependencies, mounts.
fn summary(c: &Converted, base: &Path) -> Vec<String> {
    let base = base.display().to_string();
    c.objects
        .iter()
        .map(|o| {
            let m = o.metadata();
            let mut s = format!("{} {}", o.kind(), m.name);
            if let Some(t) = template(o) {
                s += &format!(" image={}", t.image.as_deref().unwrap_or("-"));
                let ports: Vec<String> = t
                    .ports
                    .iter()
                    .map(|p| match p.host_port {
                        Some(h) => format!("{}:{}", p.name, h),
                        None => p.name.clone(),
                    })
                    .collect();
                if !ports.is_empty() {
                    s += &format!(" ports={}", ports.join(","));
                }
                let mounts: Vec<String> = t
                    .mounts
                    .iter()
                    .map(|mt| {
                        let src = if let Some(v) = &mt.volume {
                            format!("volume:{v}")
                        } else if let Some(h) = &mt.host_path {
                            format!("host:{}", h.replace(&base, "BASE"))
                        } else if let Some(sec) = &mt.secret {
                            format!("secret:{sec}/{}", mt.key.as_deref().unwrap_or(""))
                        } else if let Some(cf) = &mt.config {
                            format!("config:{cf}/{}", mt.key.as_deref().unwrap_or(""))
                        } else {
                            "tmpfs".to_string()
                        };
                        format!("{}={src}{}", mt.path, if mt.read_only { ":ro" } else { "" })
                    })
                    .collect();
                if !mounts.is_empty() {
                    s += &format!(" mounts={}", mounts.join(","));
                }
            }
            let deps = match o {
                Object::Service(sv) => {
                    if !sv.spec.publish.is_empty() {
                        let p: Vec<String> = sv
                            .spec
                            .publish
                            .iter()
                            .map(|p| format!("{}->{}", p.port, p.target_port.as_deref().unwrap_or("")))
                            .collect();
                        s += &format!(" publish={}", p.join(","));
                    }
                    if sv.spec.replicas != 1 {
                        s += &format!(" replicas={}", sv.spec.replicas);
                    }
                    sv.spec.depends_on.clone()
                }
                Object::Job(j) => j.spec.depends_on.clone(),
                _ => Vec::new(),
            };
            if !deps.is_empty() {
                let d: Vec<String> = deps
                    .iter()
                    .map(|d| format!("{}:{:?}:{:?}", d.name, d.kind, d.condition))
                    .collect();
                s += &format!(" dependsOn={}", d.join(","));
            }
            s
        })
        .collect()
}

fn check_common(c: &Converted, project: &str) {
    for o in &c.objects {
        let m = o.metadata();
        assert_eq!(m.namespace, project, "{}", m.name);
        assert_eq!(
            m.labels.get(COMPOSE_PROJECT_LABEL).map(String::as_str),
            Some(project)
        );
        assert!(orch_core::model::validate::validate(o).is_empty());
    }
    assert_eq!(c.objects.len(), c.origins.len());
}

fn warning_paths(c: &Converted) -> Vec<String> {
    c.warnings.iter().map(|w| w.path.clone()).collect()
}

fn error_lines(e: &orch_core::model::manifest::ManifestErrors) -> Vec<String> {
    e.0.iter()
        .map(|e| match &e.field {
            Some(f) => format!("{}: {}", f.path, f.message),
            None => e.message.clone(),
        })
        .collect()
}

/// A fixture converted as it is, from its own directory.
fn fixture(rel: &str) -> (String, Result<Converted, orch_core::model::manifest::ManifestErrors>, PathBuf) {
    let path = Path::new(FIXTURES).join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let base = path.parent().unwrap().to_path_buf();
    let opts = Options {
        base_dir: Some(base.clone()),
        ..Options::default()
    };
    (path.display().to_string(), compose::convert(&path.display().to_string(), &text, &opts), base)
}

/// A fixture with `image: example/NAME` added to the build-only services named, converted
/// from a copy of its directory holding `db/password.txt` (the secret file the fixtures name
/// but do not ship).
fn fixture_with_images(rel: &str, services: &[&str]) -> (Converted, PathBuf, tempfile::TempDir) {
    let path = Path::new(FIXTURES).join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for s in services {
        v["services"][s]["image"] = format!("example/{s}").into();
    }
    let dir = tempfile::tempdir().unwrap();
    let project = path.parent().unwrap().file_name().unwrap();
    let base = dir.path().join(project);
    std::fs::create_dir_all(base.join("db")).unwrap();
    std::fs::write(base.join("db/password.txt"), "s3cret").unwrap();
    let opts = Options {
        base_dir: Some(base.clone()),
        ..Options::default()
    };
    let c = compose::convert(rel, &v.to_string(), &opts).unwrap_or_else(|e| panic!("{e}"));
    (c, base, dir)
}

const BUILD: &str = "cannot build here: build and push the image and set image:";
const NETWORK: &str = "orch has one flat network per project";

#[test]
fn flask_redis() {
    let (_, r, _) = fixture("awesome-compose/flask-redis/compose.yaml");
    assert_eq!(error_lines(&r.unwrap_err()), [format!("services.web.build: {BUILD}")]);
    let (c, base, _d) = fixture_with_images("awesome-compose/flask-redis/compose.yaml", &["web"]);
    check_common(&c, "flask-redis");
    assert_eq!(
        summary(&c, &base),
        [
            "Service redis image=redislabs/redismod ports=tcp-6379 publish=6379->tcp-6379",
            "Service web image=example/web ports=tcp-8000 mounts=/code=host:BASE publish=8000->tcp-8000 dependsOn=redis:Service:Started",
        ]
    );
    assert_eq!(warning_paths(&c), ["services.web.build"]);
    let Object::Service(web) = &c.objects[1] else { panic!() };
    assert_eq!(web.spec.template.stop_signal.as_deref(), Some("SIGINT"));
}

#[test]
fn gitea_postgres() {
    let (_, r, base) = fixture("awesome-compose/gitea-postgres/compose.yaml");
    let c = r.unwrap();
    check_common(&c, "gitea-postgres");
    assert_eq!(
        summary(&c, &base),
        [
            "Service db image=postgres:alpine ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:gitea-postgres-db-data",
            "Service gitea image=gitea/gitea:latest ports=tcp-3000 mounts=/data=volume:gitea-postgres-git-data publish=3000->tcp-3000",
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn nginx_flask_mysql() {
    let (_, r, _) = fixture("awesome-compose/nginx-flask-mysql/compose.yaml");
    let errs = error_lines(&r.unwrap_err());
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0], format!("services.backend.build: {BUILD}"));
    assert_eq!(errs[1], format!("services.proxy.build: {BUILD}"));
    assert!(errs[2].starts_with("secrets.db-password.file: cannot read /work/shared/fixtures/awesome-compose/nginx-flask-mysql/db/password.txt"), "{}", errs[2]);
    let (c, base, _d) = fixture_with_images("awesome-compose/nginx-flask-mysql/compose.yaml", &["backend", "proxy"]);
    check_common(&c, "nginx-flask-mysql");
    assert_eq!(
        summary(&c, &base),
        [
            "Secret db-password",
            "Service backend image=example/backend ports=tcp-8000 mounts=/run/secrets/db-password=secret:db-password/db-password:ro publish=8000->tcp-8000 dependsOn=db:Service:Ready",
            "Service db image=mariadb:10-focal ports=tcp-3306,tcp-33060 mounts=/var/lib/mysql=volume:nginx-flask-mysql-db-data,/run/secrets/db-password=secret:db-password/db-password:ro",
            "Service proxy image=example/proxy ports=tcp-80 publish=80->tcp-80 dependsOn=backend:Service:Started",
        ]
    );
    assert_eq!(
        warning_paths(&c),
        ["networks.backnet", "networks.frontnet", "services.backend.build", "services.proxy.build"]
    );
    assert!(c.warnings[0].message.contains(NETWORK));
    let Object::Secret(s) = &c.objects[0] else { panic!() };
    assert_eq!(s.data["db-password"], "s3cret");
    let Object::Service(db) = &c.objects[2] else { panic!() };
    let probe = db.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(
        probe.exec.as_ref().unwrap().command,
        ["/bin/sh", "-c", "mysqladmin ping -h 127.0.0.1 --password=\"$(cat /run/secrets/db-password)\" --silent"]
    );
    assert_eq!(probe.period.unwrap().to_string(), "3s");
    assert_eq!(probe.failure_threshold, Some(5));
    assert_eq!(db.spec.template.args, ["--default-authentication-plugin=mysql_native_password"]);
}

#[test]
fn nginx_golang_postgres() {
    let (_, r, _) = fixture("awesome-compose/nginx-golang-postgres/compose.yaml");
    let errs = error_lines(&r.unwrap_err());
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0], format!("services.backend.build: {BUILD}"));
    assert!(errs[1].starts_with("secrets.db-password.file: cannot read"));
    let (c, base, _d) = fixture_with_images("awesome-compose/nginx-golang-postgres/compose.yaml", &["backend"]);
    check_common(&c, "nginx-golang-postgres");
    assert_eq!(
        summary(&c, &base),
        [
            "Secret db-password",
            "Service backend image=example/backend mounts=/run/secrets/db-password=secret:db-password/db-password:ro dependsOn=db:Service:Ready",
            "Service db image=postgres ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:nginx-golang-postgres-db-data,/run/secrets/db-password=secret:db-password/db-password:ro",
            "Service proxy image=nginx ports=tcp-80 mounts=/etc/nginx/conf.d/default.conf=host:BASE/proxy/nginx.conf:ro publish=80->tcp-80 dependsOn=backend:Service:Started",
        ]
    );
    assert_eq!(warning_paths(&c), ["services.backend.build"]);
    let Object::Service(db) = &c.objects[2] else { panic!() };
    assert_eq!(db.spec.template.user.as_deref(), Some("postgres"));
    let probe = db.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(probe.exec.as_ref().unwrap().command, ["pg_isready"]);
    assert_eq!(probe.timeout.unwrap().to_string(), "5s");
}

#[test]
fn postgresql_pgadmin() {
    let (_, r, base) = fixture("awesome-compose/postgresql-pgadmin/compose.yaml");
    let c = r.unwrap();
    check_common(&c, "postgresql-pgadmin");
    assert_eq!(
        summary(&c, &base),
        [
            "Service pgadmin image=dpage/pgadmin4:latest ports=tcp-80 publish=5050->tcp-80",
            "Service postgres image=postgres:latest ports=tcp-5432 publish=5432->tcp-5432",
        ]
    );
    // No .env next to the fixture: every variable is unset, as docker compose warns.
    assert_eq!(
        warning_paths(&c),
        [
            "services.pgadmin.environment[0]",
            "services.pgadmin.environment[1]",
            "services.postgres.environment[0]",
            "services.postgres.environment[1]",
            "services.postgres.environment[2]",
        ]
    );
    assert!(c.warnings[0].message.contains("variable PGADMIN_MAIL is not set"));
    // container_name equals the service name: no extra route.
    assert!(c.objects.iter().all(|o| o.kind() == orch_core::model::object::Kind::Service));
}

#[test]
fn prometheus_grafana() {
    let (_, r, base) = fixture("awesome-compose/prometheus-grafana/compose.yaml");
    let c = r.unwrap();
    check_common(&c, "prometheus-grafana");
    assert_eq!(
        summary(&c, &base),
        [
            "Service grafana image=grafana/grafana ports=tcp-3000 mounts=/etc/grafana/provisioning/datasources=host:BASE/grafana publish=3000->tcp-3000",
            "Service prometheus image=prom/prometheus ports=tcp-9090 mounts=/etc/prometheus=host:BASE/prometheus,/prometheus=volume:prometheus-grafana-prom-data publish=9090->tcp-9090",
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn react_express_mongodb() {
    let (_, r, _) = fixture("awesome-compose/react-express-mongodb/compose.yaml");
    assert_eq!(
        error_lines(&r.unwrap_err()),
        [format!("services.backend.build: {BUILD}"), format!("services.frontend.build: {BUILD}")]
    );
    let (c, base, _d) = fixture_with_images("awesome-compose/react-express-mongodb/compose.yaml", &["backend", "frontend"]);
    check_common(&c, "react-express-mongodb");
    assert_eq!(
        summary(&c, &base),
        [
            "Service backend image=example/backend ports=tcp-3000 mounts=/usr/src/app=host:BASE/backend,/usr/src/app/node_modules=tmpfs dependsOn=mongo:Service:Started",
            "Service frontend image=example/frontend ports=tcp-3000 mounts=/usr/src/app=host:BASE/frontend,/usr/src/app/node_modules=tmpfs publish=3000->tcp-3000 dependsOn=backend:Service:Started",
            "Service mongo image=mongo:4.2.0 ports=tcp-27017 mounts=/data/db=volume:react-express-mongodb-mongo-data",
        ]
    );
    assert_eq!(
        warning_paths(&c),
        [
            "networks.express-mongo",
            "networks.react-express",
            "services.backend.build",
            "services.backend.volumes[1]",
            "services.frontend.build",
            "services.frontend.volumes[1]",
            "services.frontend.stdin_open",
        ]
    );
    assert!(c.warnings[3].message.contains("anonymous volume"));
}

#[test]
fn spring_postgres() {
    let (_, r, _) = fixture("awesome-compose/spring-postgres/compose.yaml");
    let errs = error_lines(&r.unwrap_err());
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0], format!("services.backend.build: {BUILD}"));
    let (c, base, _d) = fixture_with_images("awesome-compose/spring-postgres/compose.yaml", &["backend"]);
    check_common(&c, "spring-postgres");
    assert_eq!(
        summary(&c, &base),
        [
            "Secret db-password",
            "Service backend image=example/backend ports=tcp-8080 publish=8080->tcp-8080",
            "Service db image=postgres ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:spring-postgres-db-data,/run/secrets/db-password=secret:db-password/db-password:ro",
        ]
    );
    assert_eq!(warning_paths(&c), ["networks.spring-postgres", "services.backend.build"]);
}

#[test]
fn traefik_golang() {
    let (_, r, _) = fixture("awesome-compose/traefik-golang/compose.yaml");
    assert_eq!(error_lines(&r.unwrap_err()), [format!("services.backend.build: {BUILD}")]);
    let (c, base, _d) = fixture_with_images("awesome-compose/traefik-golang/compose.yaml", &["backend"]);
    check_common(&c, "traefik-golang");
    assert_eq!(
        summary(&c, &base),
        [
            "Service backend image=example/backend",
            "Service frontend image=traefik:2.6 ports=tcp-80 mounts=/var/run/docker.sock=host:/var/run/docker.sock publish=80->tcp-80 dependsOn=backend:Service:Started",
        ]
    );
    assert_eq!(
        warning_paths(&c),
        [
            "services.backend.build",
            "services.backend.labels.traefik.http.routers.go.rule",
            "services.frontend.volumes[0]",
        ]
    );
    let Object::Service(fe) = &c.objects[1] else { panic!() };
    // The string command is split as a shell would.
    assert_eq!(
        fe.spec.template.args,
        ["--providers.docker", "--entrypoints.web.address=:80", "--providers.docker.exposedbydefault=false"]
    );
    let Object::Service(be) = &c.objects[0] else { panic!() };
    assert_eq!(be.spec.template.labels["traefik.enable"], "true");
    assert_eq!(be.metadata.annotations["traefik.http.routers.go.rule"], "Path(`/`)");
}

#[test]
fn wordpress_mysql() {
    let (_, r, base) = fixture("awesome-compose/wordpress-mysql/compose.yaml");
    let c = r.unwrap();
    check_common(&c, "wordpress-mysql");
    assert_eq!(
        summary(&c, &base),
        [
            "Service db image=mariadb:10.6.4-focal ports=tcp-3306,tcp-33060 mounts=/var/lib/mysql=volume:wordpress-mysql-db-data",
            "Service wordpress image=wordpress:latest ports=tcp-80 publish=80->tcp-80",
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn voting_app_compose() {
    let (_, r, _) = fixture("example-voting-app/docker-compose.yml");
    // seed is in a profile (not converted), so its build is no error.
    assert_eq!(
        error_lines(&r.unwrap_err()),
        [
            format!("services.result.build: {BUILD}"),
            format!("services.vote.build: {BUILD}"),
            format!("services.worker.build: {BUILD}"),
        ]
    );
    let (c, base, _d) = fixture_with_images("example-voting-app/docker-compose.yml", &["vote", "result", "worker", "seed"]);
    check_common(&c, "example-voting-app");
    assert_eq!(
        summary(&c, &base),
        [
            "Service db image=postgres:15-alpine mounts=/var/lib/postgresql/data=volume:example-voting-app-db-data,/healthchecks=host:BASE/healthchecks",
            "Service redis image=redis:alpine mounts=/healthchecks=host:BASE/healthchecks",
            "Service result image=example/result ports=tcp-80,tcp-9229 mounts=/usr/local/app=host:BASE/result publish=8081->tcp-80,9229->tcp-9229 dependsOn=db:Service:Ready",
            "Service vote image=example/vote ports=tcp-80 mounts=/usr/local/app=host:BASE/vote publish=8080->tcp-80 dependsOn=redis:Service:Ready",
            "Service worker image=example/worker dependsOn=db:Service:Ready,redis:Service:Ready",
        ]
    );
    assert_eq!(
        warning_paths(&c),
        [
            "networks.back-tier",
            "networks.front-tier",
            "services.result.build",
            "services.result.ports[1]",
            "services.seed.profiles",
            "services.vote.build",
            "services.worker.build",
        ]
    );
    assert!(c.warnings[3].message.contains("host address 127.0.0.1 not honoured"));
    let Object::Service(result) = &c.objects[2] else { panic!() };
    assert_eq!(result.spec.template.command, ["nodemon", "--inspect=0.0.0.0", "server.js"]);
    let Object::Service(redis) = &c.objects[1] else { panic!() };
    let probe = redis.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(probe.exec.as_ref().unwrap().command, ["/bin/sh", "-c", "/healthchecks/redis.sh"]);
    assert_eq!(probe.period.unwrap().to_string(), "5s");
    // Compose's default restart is "no".
    assert_eq!(redis.spec.template.restart_policy, orch_core::model::object::RestartPolicy::Never);
}

#[test]
fn voting_app_stack() {
    let (_, r, base) = fixture("example-voting-app/docker-stack.yml");
    let c = r.unwrap();
    check_common(&c, "example-voting-app");
    assert_eq!(
        summary(&c, &base),
        [
            "Service db image=postgres:15-alpine mounts=/var/lib/postgresql/data=volume:example-voting-app-db-data",
            "Service redis image=redis:alpine",
            "Service result image=dockersamples/examplevotingapp_result ports=tcp-80 publish=8081->tcp-80",
            "Service vote image=dockersamples/examplevotingapp_vote ports=tcp-80 publish=8080->tcp-80 replicas=2",
            "Service worker image=dockersamples/examplevotingapp_worker replicas=2",
        ]
    );
    assert_eq!(warning_paths(&c), ["version", "networks.backend", "networks.frontend"]);
    assert!(c.warnings[0].message.contains("obsolete"));
}
