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
                            .map(|p| {
                                format!("{}->{}", p.port, p.target_port.as_deref().unwrap_or(""))
                            })
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
                s += &format!(" dependsOn={}", dependencies(&deps).join(","));
            }
            s
        })
        .collect()
}

/// `Kind name` of every object.
fn names(c: &Converted) -> Vec<String> {
    c.objects
        .iter()
        .map(|o| format!("{} {}", o.kind(), o.metadata().name))
        .collect()
}

/// `name:Kind:Condition` of every dependency.
fn dependencies(deps: &[orch_core::model::object::Dependency]) -> Vec<String> {
    deps.iter()
        .map(|d| format!("{}:{:?}:{:?}", d.name, d.kind, d.condition))
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
fn fixture(
    rel: &str,
) -> (
    String,
    Result<Converted, orch_core::model::manifest::ManifestErrors>,
    PathBuf,
) {
    let path = Path::new(FIXTURES).join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let base = path.parent().unwrap().to_path_buf();
    let opts = Options {
        base_dir: Some(base.clone()),
        ..Options::default()
    };
    (
        path.display().to_string(),
        compose::convert(&path.display().to_string(), &text, &opts),
        base,
    )
}

/// A fixture with `image: example/NAME` added to the build-only services named, converted
/// from a copy of its directory holding `db/password.txt` (the secret file the fixtures name
/// but do not ship).
fn fixture_with_images(rel: &str, services: &[&str]) -> (Converted, PathBuf, tempfile::TempDir) {
    let path = Path::new(FIXTURES).join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    // Insert `image:` after each service's own line, at the indentation of its keys, so the
    // file keeps its lines and order.
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        out.push(line.to_string());
        let name = line
            .trim_end()
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(':'));
        if let Some(name) = name.filter(|n| services.contains(n)) {
            let next = lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .unwrap();
            let indent = &next[..next.len() - next.trim_start().len()];
            out.push(format!("{indent}image: example/{name}"));
        }
    }
    let text = out.join("\n");
    let dir = tempfile::tempdir().unwrap();
    let project = path.parent().unwrap().file_name().unwrap();
    let base = dir.path().join(project);
    std::fs::create_dir_all(base.join("db")).unwrap();
    std::fs::write(base.join("db/password.txt"), "s3cret").unwrap();
    let opts = Options {
        base_dir: Some(base.clone()),
        ..Options::default()
    };
    let c = compose::convert(rel, &text, &opts).unwrap_or_else(|e| panic!("{e}"));
    (c, base, dir)
}

const BUILD: &str = "cannot build here: build and push the image and set image:";
const NETWORK: &str = "orch has one flat network per project";

/// Converts fixture `rel` as it is and asserts its objects (see [`summary`]) and the paths of
/// its warnings, exactly.
fn assert_clean(rel: &str, project: &str, objects: &[&str], warnings: &[&str]) -> Converted {
    let (_, r, base) = fixture(rel);
    let c = r.unwrap_or_else(|e| panic!("{e}"));
    check_common(&c, project);
    assert_eq!(summary(&c, &base), objects, "{rel}");
    assert_eq!(warning_paths(&c), warnings, "{rel}: {:?}", c.warnings);
    c
}

/// Fixture `rel` has build-only services: asserts the errors it gives as it is (each line
/// starting with one of `errors`), then converts it with images set for `services` and
/// asserts as [`assert_clean`].
fn assert_build(
    rel: &str,
    errors: &[&str],
    services: &[&str],
    project: &str,
    objects: &[&str],
    warnings: &[&str],
) -> Converted {
    let (_, r, _) = fixture(rel);
    let got = error_lines(&r.unwrap_err());
    assert_eq!(got.len(), errors.len(), "{rel}: {got:?}");
    for (g, want) in got.iter().zip(errors) {
        let want = want.replace("BUILD", BUILD);
        assert!(
            g.starts_with(&want),
            "{rel}: {g} does not start with {want}"
        );
    }
    let (c, base, _dir) = fixture_with_images(rel, services);
    check_common(&c, project);
    assert_eq!(summary(&c, &base), objects, "{rel}");
    assert_eq!(warning_paths(&c), warnings, "{rel}: {:?}", c.warnings);
    c
}

fn service(c: &Converted, name: &str) -> orch_core::model::object::Service {
    c.objects
        .iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name == name => Some((**s).clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no service {name}"))
}

#[test]
fn flask_redis() {
    let c = assert_build(
        "awesome-compose/flask-redis/compose.yaml",
        &["services.web.build: BUILD"],
        &["web"],
        "flask-redis",
        &[
            "Service redis image=redislabs/redismod ports=tcp-6379 publish=6379->tcp-6379",
            "Service web image=example/web ports=tcp-8000 mounts=/code=host:BASE publish=8000->tcp-8000 dependsOn=redis:Service:Started",
        ],
        &["services.web.build"],
    );
    assert_eq!(
        service(&c, "web").spec.template.stop_signal.as_deref(),
        Some("SIGINT")
    );
}

#[test]
fn gitea_postgres() {
    assert_clean(
        "awesome-compose/gitea-postgres/compose.yaml",
        "gitea-postgres",
        &[
            "Service db image=postgres:alpine ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:gitea-postgres-db-data",
            "Service gitea image=gitea/gitea:latest ports=tcp-3000 mounts=/data=volume:gitea-postgres-git-data publish=3000->tcp-3000",
        ],
        &[],
    );
}

const SECRET_MISSING: &str =
    "secrets.db-password.file: cannot read /work/shared/fixtures/awesome-compose";
const DB_SECRET: &str = "/run/secrets/db-password=secret:db-password/db-password:ro";

#[test]
fn nginx_flask_mysql() {
    let c = assert_build(
        "awesome-compose/nginx-flask-mysql/compose.yaml",
        &["services.backend.build: BUILD", "services.proxy.build: BUILD", SECRET_MISSING],
        &["backend", "proxy"],
        "nginx-flask-mysql",
        &[
            "Secret db-password",
            &format!("Service backend image=example/backend ports=tcp-8000 mounts={DB_SECRET} publish=8000->tcp-8000 dependsOn=db:Service:Ready"),
            &format!("Service db image=mariadb:10-focal ports=tcp-3306,tcp-33060 mounts=/var/lib/mysql=volume:nginx-flask-mysql-db-data,{DB_SECRET}"),
            "Service proxy image=example/proxy ports=tcp-80 publish=80->tcp-80 dependsOn=backend:Service:Started",
        ],
        &["services.backend.build", "services.proxy.build", "networks.backnet", "networks.frontnet"],
    );
    assert!(c.warnings[2].message.contains(NETWORK));
    let Object::Secret(s) = &c.objects[0] else {
        panic!()
    };
    assert_eq!(s.data["db-password"], "s3cret");
    let db = service(&c, "db");
    let probe = db.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(
        probe.exec.as_ref().unwrap().command,
        [
            "/bin/sh",
            "-c",
            "mysqladmin ping -h 127.0.0.1 --password=\"$(cat /run/secrets/db-password)\" --silent"
        ]
    );
    assert_eq!(probe.period.unwrap().to_string(), "3s");
    assert_eq!(probe.failure_threshold, Some(5));
    assert_eq!(
        db.spec.template.args,
        ["--default-authentication-plugin=mysql_native_password"]
    );
}

#[test]
fn nginx_golang_postgres() {
    let c = assert_build(
        "awesome-compose/nginx-golang-postgres/compose.yaml",
        &["services.backend.build: BUILD", SECRET_MISSING],
        &["backend"],
        "nginx-golang-postgres",
        &[
            "Secret db-password",
            &format!("Service backend image=example/backend mounts={DB_SECRET} dependsOn=db:Service:Ready"),
            &format!("Service db image=postgres ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:nginx-golang-postgres-db-data,{DB_SECRET}"),
            "Service proxy image=nginx ports=tcp-80 mounts=/etc/nginx/conf.d/default.conf=host:BASE/proxy/nginx.conf:ro publish=80->tcp-80 dependsOn=backend:Service:Started",
        ],
        &["services.backend.build"],
    );
    let db = service(&c, "db");
    assert_eq!(db.spec.template.user.as_deref(), Some("postgres"));
    let probe = db.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(probe.exec.as_ref().unwrap().command, ["pg_isready"]);
    assert_eq!(probe.timeout.unwrap().to_string(), "5s");
}

#[test]
fn postgresql_pgadmin() {
    // No .env next to the fixture: every variable is unset, as docker compose warns.
    // container_name equals the service name: no extra route.
    let c = assert_clean(
        "awesome-compose/postgresql-pgadmin/compose.yaml",
        "postgresql-pgadmin",
        &[
            "Service pgadmin image=dpage/pgadmin4:latest ports=tcp-80 publish=5050->tcp-80",
            "Service postgres image=postgres:latest ports=tcp-5432 publish=5432->tcp-5432",
        ],
        &[
            "services.pgadmin.environment[0]",
            "services.pgadmin.environment[1]",
            "services.postgres.environment[0]",
            "services.postgres.environment[1]",
            "services.postgres.environment[2]",
        ],
    );
    assert!(c.warnings[0]
        .message
        .contains("variable PGADMIN_MAIL is not set"));
}

#[test]
fn prometheus_grafana() {
    assert_clean(
        "awesome-compose/prometheus-grafana/compose.yaml",
        "prometheus-grafana",
        &[
            "Service grafana image=grafana/grafana ports=tcp-3000 mounts=/etc/grafana/provisioning/datasources=host:BASE/grafana publish=3000->tcp-3000",
            "Service prometheus image=prom/prometheus ports=tcp-9090 mounts=/etc/prometheus=host:BASE/prometheus,/prometheus=volume:prometheus-grafana-prom-data publish=9090->tcp-9090",
        ],
        &[],
    );
}

#[test]
fn react_express_mongodb() {
    let c = assert_build(
        "awesome-compose/react-express-mongodb/compose.yaml",
        &["services.backend.build: BUILD", "services.frontend.build: BUILD"],
        &["backend", "frontend"],
        "react-express-mongodb",
        &[
            "Service backend image=example/backend ports=tcp-3000 mounts=/usr/src/app=host:BASE/backend,/usr/src/app/node_modules=tmpfs dependsOn=mongo:Service:Started",
            "Service frontend image=example/frontend ports=tcp-3000 mounts=/usr/src/app=host:BASE/frontend,/usr/src/app/node_modules=tmpfs publish=3000->tcp-3000 dependsOn=backend:Service:Started",
            "Service mongo image=mongo:4.2.0 ports=tcp-27017 mounts=/data/db=volume:react-express-mongodb-mongo-data",
        ],
        &[
            "services.backend.build",
            "services.backend.volumes[1]",
            "services.frontend.build",
            "services.frontend.volumes[1]",
            "services.frontend.stdin_open",
            "networks.express-mongo",
            "networks.react-express",
        ],
    );
    assert!(c.warnings[1].message.contains("anonymous volume"));
}

#[test]
fn spring_postgres() {
    assert_build(
        "awesome-compose/spring-postgres/compose.yaml",
        &["services.backend.build: BUILD", SECRET_MISSING],
        &["backend"],
        "spring-postgres",
        &[
            "Secret db-password",
            "Service backend image=example/backend ports=tcp-8080 publish=8080->tcp-8080",
            &format!("Service db image=postgres ports=tcp-5432 mounts=/var/lib/postgresql/data=volume:spring-postgres-db-data,{DB_SECRET}"),
        ],
        &["services.backend.build", "networks.spring-postgres"],
    );
}

#[test]
fn traefik_golang() {
    let c = assert_build(
        "awesome-compose/traefik-golang/compose.yaml",
        &["services.backend.build: BUILD"],
        &["backend"],
        "traefik-golang",
        &[
            "Service backend image=example/backend",
            "Service frontend image=traefik:2.6 ports=tcp-80 mounts=/var/run/docker.sock=host:/var/run/docker.sock publish=80->tcp-80 dependsOn=backend:Service:Started",
        ],
        &[
            "services.backend.build",
            "services.backend.labels.traefik.http.routers.go.rule",
            "services.frontend.volumes[0]",
        ],
    );
    // The string command is split as a shell would.
    assert_eq!(
        service(&c, "frontend").spec.template.args,
        [
            "--providers.docker",
            "--entrypoints.web.address=:80",
            "--providers.docker.exposedbydefault=false"
        ]
    );
    let be = service(&c, "backend");
    assert_eq!(be.spec.template.labels["traefik.enable"], "true");
    assert_eq!(
        be.metadata.annotations["traefik.http.routers.go.rule"],
        "Path(`/`)"
    );
}

#[test]
fn wordpress_mysql() {
    assert_clean(
        "awesome-compose/wordpress-mysql/compose.yaml",
        "wordpress-mysql",
        &[
            "Service db image=mariadb:10.6.4-focal ports=tcp-3306,tcp-33060 mounts=/var/lib/mysql=volume:wordpress-mysql-db-data",
            "Service wordpress image=wordpress:latest ports=tcp-80 publish=80->tcp-80",
        ],
        &[],
    );
}

#[test]
fn voting_app_compose() {
    // seed is in a profile (not converted), so its build is no error.
    let c = assert_build(
        "example-voting-app/docker-compose.yml",
        &["services.result.build: BUILD", "services.vote.build: BUILD", "services.worker.build: BUILD"],
        &["vote", "result", "worker", "seed"],
        "example-voting-app",
        &[
            "Service db image=postgres:15-alpine mounts=/var/lib/postgresql/data=volume:example-voting-app-db-data,/healthchecks=host:BASE/healthchecks",
            "Service redis image=redis:alpine mounts=/healthchecks=host:BASE/healthchecks",
            "Service result image=example/result ports=tcp-80,tcp-9229 mounts=/usr/local/app=host:BASE/result publish=8081->tcp-80,9229->tcp-9229 dependsOn=db:Service:Ready",
            "Service vote image=example/vote ports=tcp-80 mounts=/usr/local/app=host:BASE/vote publish=8080->tcp-80 dependsOn=redis:Service:Ready",
            "Service worker image=example/worker dependsOn=db:Service:Ready,redis:Service:Ready",
        ],
        &[
            "services.result.build",
            "services.result.ports[1]",
            "services.seed.profiles",
            "services.vote.build",
            "services.worker.build",
            "networks.back-tier",
            "networks.front-tier",
        ],
    );
    assert!(c.warnings[1]
        .message
        .contains("host address 127.0.0.1 not honoured"));
    assert_eq!(
        service(&c, "result").spec.template.command,
        ["nodemon", "--inspect=0.0.0.0", "server.js"]
    );
    let redis = service(&c, "redis");
    let probe = redis.spec.template.readiness_probe.as_ref().unwrap();
    assert_eq!(
        probe.exec.as_ref().unwrap().command,
        ["/bin/sh", "-c", "/healthchecks/redis.sh"]
    );
    assert_eq!(probe.period.unwrap().to_string(), "5s");
    // Compose's default restart is "no".
    assert_eq!(
        redis.spec.template.restart_policy,
        orch_core::model::object::RestartPolicy::Never
    );
}

#[test]
fn voting_app_stack() {
    let c = assert_clean(
        "example-voting-app/docker-stack.yml",
        "example-voting-app",
        &[
            "Service db image=postgres:15-alpine mounts=/var/lib/postgresql/data=volume:example-voting-app-db-data",
            "Service redis image=redis:alpine",
            "Service result image=dockersamples/examplevotingapp_result ports=tcp-80 publish=8081->tcp-80",
            "Service vote image=dockersamples/examplevotingapp_vote ports=tcp-80 publish=8080->tcp-80 replicas=2",
            "Service worker image=dockersamples/examplevotingapp_worker replicas=2",
        ],
        &["version", "networks.backend", "networks.frontend"],
    );
    assert!(c.warnings[0].message.contains("obsolete"));
}

/// Converts `yaml` from a fresh project directory holding `files` (name, content).
fn convert_in(yaml: &str, files: &[(&str, &str)], strict: bool) -> Result<Converted, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("proj");
    std::fs::create_dir_all(&base).unwrap();
    for (name, content) in files {
        let p = base.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let opts = Options {
        base_dir: Some(base),
        strict,
        ..Options::default()
    };
    compose::convert("compose.yaml", yaml, &opts).map_err(|e| error_lines(&e))
}

fn ok(yaml: &str) -> Converted {
    convert_in(yaml, &[], false).unwrap_or_else(|e| panic!("{e:?}"))
}

fn warned(c: &Converted, path: &str, contains: &str) -> bool {
    c.warnings
        .iter()
        .any(|w| w.path == path && w.message.contains(contains))
}

#[test]
fn completed_dependencies_become_jobs() {
    let c = ok("services:
  migrate: {image: app, command: migrate, restart: always}
  web:
    image: app
    ports: ['80:8080']
    depends_on:
      migrate: {condition: service_completed_successfully}
      cache: {condition: service_started, restart: true}
  cache: {image: redis}
");
    let kinds = names(&c);
    assert_eq!(kinds, ["Service cache", "Job migrate", "Service web"]);
    let Object::Job(j) = &c.objects[1] else {
        panic!()
    };
    assert_eq!(
        j.spec.template.restart_policy,
        orch_core::model::object::RestartPolicy::OnFailure
    );
    assert_eq!(j.spec.template.args, ["migrate"]);
    let Object::Service(web) = &c.objects[2] else {
        panic!()
    };
    assert_eq!(
        dependencies(&web.spec.depends_on),
        ["cache:Service:Started", "migrate:Job:Completed"]
    );
    assert!(warned(&c, "services.migrate.restart", "orch job"));
    assert!(warned(
        &c,
        "services.web.depends_on.cache.restart",
        "not honoured"
    ));
}

#[test]
fn bad_input_is_an_error_naming_the_field() {
    for (yaml, want) in [
        (
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: {a: {condition: service_healthy}}}\n",
            "services.a.depends_on: depends_on has a cycle: a → b → a",
        ),
        ("services:\n  a: {image: x, depends_on: [a]}\n", "services.a.depends_on: depends_on has a cycle: a → a"),
        ("services:\n  web: {image: x, bogus: 1}\n", "services.web.bogus: unknown key \"bogus\""),
        ("services:\n  web: {image: x}\nbogus: {}\n", "bogus: unknown key \"bogus\""),
        ("services:\n  web: {image: x, healthcheck: {test: [CMD, x], every: 1s}}\n", "services.web.healthcheck.every: unknown key"),
        ("services:\n  web: {build: .}\n", "services.web.build: cannot build here: build and push the image and set image:"),
        ("services:\n  web: {image: x, env_file: missing.env}\n", "services.web.env_file: cannot read env file"),
        ("services:\n  web: {image: x, depends_on: [nope]}\n", "services.web.depends_on[0]: no such service in this file"),
        ("services:\n  web: {image: x, volumes: ['data:/d']}\n", "services.web.volumes[0]: undefined volume \"data\""),
        ("services:\n  web: {image: x, secrets: [pw]}\n", "services.web.secrets[0]: undefined secret"),
        ("services:\n  web: {image: x, networks: [back]}\n", "services.web.networks[0]: undefined network"),
        ("services:\n  web: {image: x, ports: ['80:80/sctp']}\n", "services.web.ports[0]: orch ports are tcp or udp"),
        ("services:\n  web: {image: x, restart: sometimes}\n", "services.web.restart: must be no, always"),
        ("services:\n  web: {image: x, command: \"echo 'unterminated\"}\n", "services.web.command: cannot be split into words"),
        ("services:\n  my_web: {image: x}\n", "services.my_web: an orch service name is a DNS label"),
        ("services:\n  web: {image: 'x:${TAG:?set TAG}'}\n", "services.web.image: required variable TAG is not set"),
        ("services:\n  web: {image: x, deploy: {resources: {limits: {memory: lots}}}}\n", "services.web.deploy.resources.limits.memory: invalid memory size"),
        ("services:\n  web: {image: NotAnImage}\n", "Service/web: spec.template.image"),
        ("services: {}\n", "services: a Compose file needs at least one service"),
        ("[1, 2]\n", "a Compose file is a mapping with services:"),
        ("services:\n  a: {image: x, networks: {default: {aliases: [b]}}}\n  b: {image: y}\n", "services.a.networks.default.aliases[0]: is also the name of a service"),
    ] {
        let errs = convert_in(yaml, &[], false).expect_err(yaml);
        assert!(errs.iter().any(|e| e.starts_with(want)), "{yaml}\nwant {want}\ngot {errs:?}");
    }
}

#[test]
fn environment_env_files_and_interpolation() {
    let yaml = "services:
  web:
    image: 'app:${TAG:-latest}'
    env_file: [web.env, {path: optional.env, required: false}]
    environment:
      FROM_MAP: 1
      OVERRIDE: env
      FROM_DOTENV:
      NOWHERE:
    labels: {cost: $$5}
    command: [echo, '${GREETING}']
";
    let c = convert_in(
        yaml,
        &[
            (".env", "GREETING=hi $$x\nFROM_DOTENV=dot\n"),
            ("web.env", "# file\nA=1\nOVERRIDE=file\n"),
        ],
        false,
    )
    .unwrap();
    let Object::Service(s) = &c.objects[0] else {
        panic!()
    };
    let t = &s.spec.template;
    assert_eq!(t.image.as_deref(), Some("app:latest"));
    assert_eq!(t.args, ["echo", "hi $x"]);
    let env: Vec<String> = t
        .env
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    assert_eq!(
        env,
        ["A=1", "OVERRIDE=env", "FROM_DOTENV=dot", "FROM_MAP=1"]
    );
    assert!(warned(&c, "services.web.environment.NOWHERE", "left unset"));
    assert!(warned(
        &c,
        "services.web.labels.cost",
        "not a valid orch label value"
    ));
}

#[test]
fn aliases_and_container_names_are_routes() {
    let c = ok("services:
  db:
    image: postgres
    container_name: database
    networks:
      back: {aliases: [pg, postgres], ipv4_address: 10.0.0.5}
networks:
  back: {driver: bridge}
");
    let names = names(&c);
    assert_eq!(
        names,
        ["Service db", "Route pg", "Route postgres", "Route database"]
    );
    let Object::Route(r) = &c.objects[1] else {
        panic!()
    };
    assert!(r.spec.headless);
    assert_eq!(r.spec.selector.match_labels["orch/service"], "db");
    assert!(warned(
        &c,
        "services.db.networks.back.ipv4_address",
        "flat network"
    ));
    assert!(warned(&c, "networks.back", NETWORK));
}

#[test]
fn deploy_maps_onto_the_service() {
    let c = ok("services:
  web:
    image: app
    deploy:
      mode: global
      labels: [tier=web]
      resources:
        limits: {cpus: '0.5', memory: 512M, pids: 100}
        reservations: {cpus: '0.25', memory: 512M}
      update_config: {parallelism: 2, delay: 10s, order: start-first, failure_action: rollback, monitor: 5s, max_failure_ratio: 0.1}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 1m}
      placement:
        constraints: [node.labels.disk==ssd, node.labels.zone!=a, node.role==manager]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 1
");
    let Object::Service(s) = &c.objects[0] else {
        panic!()
    };
    assert_eq!(s.spec.mode, orch_core::model::object::ServiceMode::Global);
    assert_eq!(s.metadata.labels["tier"], "web");
    assert_eq!(s.spec.template.resources.cpu.unwrap().to_string(), "500m");
    assert_eq!(
        s.spec.template.resources.memory.unwrap().to_string(),
        "512Mi"
    );
    assert_eq!(
        s.spec.template.restart_policy,
        orch_core::model::object::RestartPolicy::OnFailure
    );
    assert_eq!(
        s.spec.update.order,
        Some(orch_core::model::object::UpdateOrder::StartFirst)
    );
    assert_eq!(
        s.spec.update.max_surge,
        Some(orch_core::model::object::IntOrPercent::Int(2))
    );
    assert_eq!(s.spec.update.auto_rollback, Some(true));
    assert_eq!(s.spec.placement.node_selector["disk"], "ssd");
    assert_eq!(s.spec.placement.node_affinity[0].key, "zone");
    assert_eq!(s.spec.placement.max_per_node, Some(1));
    let d = "services.web.deploy";
    assert_eq!(
        warning_paths(&c),
        [
            format!("{d}.resources.limits.pids"),
            format!("{d}.update_config.delay"),
            format!("{d}.update_config.monitor"),
            format!("{d}.update_config.max_failure_ratio"),
            format!("{d}.restart_policy.delay"),
            format!("{d}.restart_policy.max_attempts"),
            format!("{d}.restart_policy.window"),
            format!("{d}.placement.constraints[2]"),
            format!("{d}.placement.preferences"),
            format!("{d}.resources.reservations.cpus"),
        ]
    );
}

#[test]
fn secrets_configs_tmpfs_and_the_rest() {
    let c = convert_in(
        "name: My_App
services:
  web:
    image: app
    secrets: [api-key, {source: ext, target: other, mode: 0440}]
    configs: [{source: conf, target: /etc/app.conf}, inline]
    tmpfs: ['/run:size=64m']
    volumes: [{type: volume, source: data, target: /data, read_only: true}, 'logs:/logs:rw']
    ports: ['53:53/udp', '8080']
    expose: ['9000-9001']
    healthcheck: {test: [NONE]}
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    read_only: true
    hostname: h
    working_dir: /srv
    stop_grace_period: 1m30s
    init: true
    privileged: true
    logging: {driver: json-file}
    x-custom: anything
secrets:
  api-key: {file: ./key.txt}
  ext: {external: true}
configs:
  conf: {file: app.conf}
  inline: {content: hello}
volumes:
  data:
  logs: {name: shared-logs, driver: nfs}
",
        &[("key.txt", "k3y"), ("app.conf", "a=1")],
        false,
    )
    .unwrap();
    let names = names(&c);
    assert_eq!(
        names,
        [
            "Secret api-key",
            "Config conf",
            "Config inline",
            "Service web"
        ]
    );
    assert_eq!(c.objects[0].metadata().namespace, "my-app");
    let Object::Service(s) = &c.objects[3] else {
        panic!()
    };
    let t = &s.spec.template;
    let mounts: Vec<String> = t
        .mounts
        .iter()
        .map(|m| format!("{} {:?}", m.path, m.kind()))
        .collect();
    assert_eq!(
        mounts,
        [
            "/data Some(\"volume\")",
            "/logs Some(\"volume\")",
            "/run Some(\"tmpfs\")",
            "/run/secrets/api-key Some(\"secret\")",
            "/run/secrets/other Some(\"secret\")",
            "/etc/app.conf Some(\"config\")",
            "/inline Some(\"config\")",
        ]
    );
    assert_eq!(t.mounts[0].volume.as_deref(), Some("my-app-data"));
    assert_eq!(t.mounts[1].volume.as_deref(), Some("shared-logs"));
    assert_eq!(t.mounts[4].secret.as_deref(), Some("ext"));
    assert_eq!(t.mounts[4].key.as_deref(), Some("ext"));
    assert!(t.readiness_probe.is_none());
    assert_eq!(t.capabilities.add, ["NET_ADMIN"]);
    assert!(t.read_only_root_filesystem);
    assert_eq!(t.stop_grace_period.unwrap().to_string(), "1m 30s");
    let ports: Vec<String> = t
        .ports
        .iter()
        .map(|p| format!("{}:{:?}", p.name, p.host_port))
        .collect();
    assert_eq!(
        ports,
        [
            "udp-53:Some(53)",
            "tcp-8080:None",
            "tcp-9000:None",
            "tcp-9001:None"
        ]
    );
    for (path, what) in [
        ("name", "namespace \"my-app\""),
        ("volumes.logs.driver", "not honoured"),
        ("secrets.ext.external", "create it before"),
        ("services.web.secrets[1].mode", "0400"),
        ("services.web.tmpfs[0]", "size=64m"),
        ("services.web.ports[0]", "UDP"),
        ("services.web.ports[1]", "random host port"),
        ("services.web.init", "no init process"),
        ("services.web.privileged", "not honoured"),
        ("services.web.logging", "orchctl logs"),
    ] {
        assert!(warned(&c, path, what), "{path}: {:?}", c.warnings);
    }
    assert!(!c.warnings.iter().any(|w| w.path.contains("x-custom")));
}

#[test]
fn strict_makes_warnings_errors_and_project_names() {
    let yaml = "version: '3'\nservices:\n  web: {image: app}\n";
    let errs = convert_in(yaml, &[], true).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("version: obsolete"), "{errs:?}");
    assert_eq!(ok(yaml).objects[0].metadata().namespace, "proj");
    let c = compose::convert(
        "-",
        yaml,
        &Options {
            project: Some("Other".into()),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(c.objects[0].metadata().namespace, "other");
    let c = compose::convert("-", yaml, &Options::default()).unwrap();
    assert_eq!(c.objects[0].metadata().namespace, "default");
    // Without a project directory, relative paths are errors.
    let errs = compose::convert(
        "-",
        "services:\n  web: {image: app, volumes: ['./x:/x']}\n",
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        errs.to_string().contains("needs the project directory"),
        "{errs}"
    );
}

fn arb_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let keys = prop::sample::select(vec![
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "expose",
        "depends_on",
        "healthcheck",
        "test",
        "interval",
        "restart",
        "deploy",
        "resources",
        "limits",
        "cpus",
        "memory",
        "replicas",
        "mode",
        "volumes",
        "tmpfs",
        "secrets",
        "configs",
        "networks",
        "aliases",
        "condition",
        "target",
        "published",
        "source",
        "type",
        "file",
        "external",
        "container_name",
        "labels",
        "placement",
        "constraints",
        "update_config",
        "web",
        "db",
        "services",
        "x-a",
        "profiles",
        "name",
        "read_only",
        "bind",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9:./$ {}=_-]{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "80:80",
            "db",
            "service_completed_successfully",
            "service_healthy",
            "CMD-SHELL",
            "${X:-y}",
            "./a:/b:ro",
            "bind",
            "volume",
            "tmpfs",
            "node.labels.a==b",
            "1g",
            "0.5",
            "on-failure:3"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_documents_never_panic(services in prop::collection::btree_map("[a-d]", arb_value(), 1..4), top in arb_value()) {
        let mut doc = serde_json::json!({ "services": services });
        if let serde_json::Value::Object(m) = top {
            for (k, v) in m { if k != "services" { doc[k] = v; } }
        }
        let opts = Options { base_dir: Some(std::env::temp_dir().join("orch-import-proptest-none")), ..Options::default() };
        if let Ok(c) = compose::convert("p.yaml", &doc.to_string(), &opts) {
            for o in &c.objects {
                prop_assert!(orch_core::model::validate::validate(o).is_empty());
            }
        }
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = compose::convert("p.yaml", &text, &Options::default());
    }
}
