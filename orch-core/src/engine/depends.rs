//! `dependsOn`: what must hold before a service's or job's first replicas are created
//! (Compose's `depends_on` conditions). The gate is pure ([`gate`]) over what the cache
//! shows of each dependency ([`observe`]); [`Dependents`] is the index from a service or job
//! to the services or jobs that wait for it, so a change wakes exactly those.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::engine::cache::Change;
use crate::engine::ctx::Ctx;
use crate::model::object::{
    Dependency, DependencyCondition, DependencyKind, DesiredState, JobState, Kind, Object,
    ObjectKey, Phase, ServiceMode,
};

/// What the cache shows of one dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// No such service or job.
    Missing,
    /// A service: its replicas running (or ready), ready, and how many must be ready.
    Service {
        running: u32,
        ready: u32,
        desired: u32,
    },
    /// A job: whether it started (created its first replica) and where it stands.
    Job { started: bool, state: JobState },
}

/// Whether a service or job may create its first replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Every dependency holds.
    Open,
    /// Some do not yet: the message says which ("waiting for db to be ready (0/1)").
    Wait(String),
    /// One never will (a job it needs completed failed): the message says which.
    Never(String),
}

/// The gate for `deps`, given what `observe` shows of each.
pub(crate) fn gate(deps: &[Dependency], observe: &dyn Fn(&Dependency) -> Observed) -> Gate {
    let mut waiting = Vec::new();
    for d in deps {
        let kind = match d.kind {
            DependencyKind::Service => "service",
            DependencyKind::Job => "job",
        };
        match (observe(d), d.condition) {
            (Observed::Missing, _) => waiting.push(format!("{kind} {} (not found)", d.name)),
            (Observed::Service { running, .. }, DependencyCondition::Started) => {
                if running == 0 {
                    waiting.push(format!("{} to start (no replica running)", d.name));
                }
            }
            (Observed::Service { ready, desired, .. }, _) => {
                if ready < desired.max(1) {
                    waiting.push(format!(
                        "{} to be ready ({ready}/{})",
                        d.name,
                        desired.max(1)
                    ));
                }
            }
            (
                Observed::Job {
                    state: JobState::Failed,
                    ..
                },
                DependencyCondition::Completed,
            ) => {
                return Gate::Never(format!("will not start: job {} failed", d.name));
            }
            (Observed::Job { state, .. }, DependencyCondition::Completed) => {
                if state != JobState::Succeeded {
                    waiting.push(format!("job {} to complete", d.name));
                }
            }
            (Observed::Job { started, .. }, _) => {
                if !started {
                    waiting.push(format!("job {} to start", d.name));
                }
            }
        }
    }
    if waiting.is_empty() {
        Gate::Open
    } else {
        Gate::Wait(format!("waiting for {}", waiting.join(", ")))
    }
}

/// What the cache shows of dependency `d` in namespace `ns`. A service's replicas are
/// counted from the cache (its status may lag); a global service must have every replica
/// ready.
pub(crate) fn observe(ctx: &Ctx, ns: &str, d: &Dependency) -> Observed {
    match d.kind {
        DependencyKind::Service => {
            let Some(svc) = ctx.cache.service(&Kind::Service.key(ns, &d.name)) else {
                return Observed::Missing;
            };
            let objects = ctx.cache.replica_objects_of_service(ns, &d.name);
            let active: Vec<_> = objects
                .iter()
                .filter_map(|o| o.as_replica())
                .filter(|r| r.spec.desired == DesiredState::Running)
                .collect();
            let running = active.iter().filter(|r| r.status.phase.is_up()).count() as u32;
            let ready = active
                .iter()
                .filter(|r| r.status.phase == Phase::Ready)
                .count() as u32;
            let desired = match svc.spec.mode {
                ServiceMode::Global => active.len() as u32,
                _ => svc.spec.replicas,
            };
            Observed::Service {
                running,
                ready,
                desired,
            }
        }
        DependencyKind::Job => match ctx.cache.get(Kind::Job, &Kind::Job.key(ns, &d.name)) {
            Some(o) => match o.as_ref() {
                Object::Job(j) => Observed::Job {
                    started: j.status.started.is_some(),
                    state: j.status.state,
                },
                _ => Observed::Missing,
            },
            None => Observed::Missing,
        },
    }
}

/// The gate for `deps` of an object in namespace `ns`, from the cache.
pub(crate) fn gate_in(ctx: &Ctx, ns: &str, deps: &[Dependency]) -> Gate {
    if deps.is_empty() {
        return Gate::Open;
    }
    gate(deps, &|d| observe(ctx, ns, d))
}

type Target = (String, DependencyKind, String);

/// From a service or job (namespace, kind, name) to the names of the objects (of the
/// controller's own kind) that depend on it; kept up to date from the changes of the
/// dependents, rebuilt on a resync.
pub(crate) struct Dependents {
    inner: Mutex<Index>,
    /// The controller's kind (Service or Job).
    own: Kind,
    /// An object's dependencies.
    deps_of: fn(&Object) -> &[Dependency],
    /// Whether an object still waits for its dependencies (a change of one wakes it).
    waiting: fn(&Object) -> bool,
}

#[derive(Default)]
struct Index {
    /// What each dependent `(namespace, name)` depends on.
    deps: HashMap<(String, String), Vec<Target>>,
    /// Who depends on each target.
    dependents: HashMap<Target, BTreeSet<String>>,
}

impl Index {
    fn set(&mut self, ns: &str, name: &str, deps: &[Dependency]) {
        let me = (ns.to_string(), name.to_string());
        for t in self.deps.remove(&me).unwrap_or_default() {
            if let Some(set) = self.dependents.get_mut(&t) {
                set.remove(name);
                if set.is_empty() {
                    self.dependents.remove(&t);
                }
            }
        }
        if deps.is_empty() {
            return;
        }
        let targets: Vec<Target> = deps
            .iter()
            .map(|d| (ns.to_string(), d.kind, d.name.clone()))
            .collect();
        for t in &targets {
            self.dependents
                .entry(t.clone())
                .or_default()
                .insert(name.to_string());
        }
        self.deps.insert(me, targets);
    }
}

impl Dependents {
    /// The index of objects of kind `own`, whose dependencies `deps_of` gives, that a change
    /// of a dependency wakes while `waiting` holds for them.
    pub(crate) fn new(
        own: Kind,
        deps_of: fn(&Object) -> &[Dependency],
        waiting: fn(&Object) -> bool,
    ) -> Dependents {
        Dependents {
            inner: Mutex::default(),
            own,
            deps_of,
            waiting,
        }
    }

    /// For services: their `dependsOn`; waiting while the status shows no replica.
    pub(crate) fn of_services() -> Dependents {
        Dependents::new(
            Kind::Service,
            |o| match o {
                Object::Service(s) => &s.spec.depends_on,
                _ => &[],
            },
            |o| matches!(o, Object::Service(s) if s.status.replicas == 0),
        )
    }

    /// For jobs: their `dependsOn`; waiting until they start.
    pub(crate) fn of_jobs() -> Dependents {
        Dependents::new(
            Kind::Job,
            |o| match o {
                Object::Job(j) => &j.spec.depends_on,
                _ => &[],
            },
            |o| matches!(o, Object::Job(j) if j.status.started.is_none()),
        )
    }

    /// Records what `ns/name` depends on now (nothing: removes it).
    pub(crate) fn set(&self, ns: &str, name: &str, deps: &[Dependency]) {
        self.lock().set(ns, name, deps);
    }

    /// Rebuilds the index from every object of the controller's kind in `objects`.
    pub(crate) fn rebuild(&self, objects: &[std::sync::Arc<Object>]) {
        let mut g = self.lock();
        *g = Index::default();
        for o in objects {
            let m = o.metadata();
            g.set(&m.namespace, &m.name, (self.deps_of)(o));
        }
    }

    /// The dependents of `ns/name` of kind `kind`.
    pub(crate) fn of(&self, ns: &str, kind: DependencyKind, name: &str) -> Vec<String> {
        self.lock()
            .dependents
            .get(&(ns.to_string(), kind, name.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The controller's side of a change: a change of one of its own objects updates the
    /// index; then the dependents of the service or job the
    /// change is about that are still `waiting` (looked up in the cache) are returned.
    pub(crate) fn keys_for(&self, ctx: &Ctx, c: &Change) -> Vec<ObjectKey> {
        let (own, deps_of, waiting) = (self.own, self.deps_of, self.waiting);
        if let Change::Object { kind, key, new, .. } = c {
            if *kind == own {
                if let Some(k) = ObjectKey::parse(key) {
                    let deps = new.as_deref().map_or(&[][..], deps_of);
                    self.set(&k.namespace, &k.name, deps);
                }
            }
        }
        if self.is_empty() {
            return Vec::new();
        }
        let mut keys = Vec::new();
        for (ns, kind, name) in targets_of(c) {
            for dependent in self.of(&ns, kind, &name) {
                let key = ObjectKey::new(own, &ns, &dependent);
                if ctx
                    .cache
                    .get(own, &key.store_key())
                    .is_some_and(|o| waiting(&o))
                {
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// Whether nothing depends on anything (the common case: no lookups needed).
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().dependents.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The service or job a change is about, as a dependency target: `(namespace, kind, name)`
/// of a changed service, job, or a replica's owner.
pub(crate) fn targets_of(
    c: &crate::engine::cache::Change,
) -> Vec<(String, DependencyKind, String)> {
    use crate::engine::cache::Change;
    let Change::Object { kind, key, .. } = c else {
        return Vec::new();
    };
    match kind {
        Kind::Service | Kind::Job => ObjectKey::parse(key)
            .map(|k| {
                let dk = if *kind == Kind::Service {
                    DependencyKind::Service
                } else {
                    DependencyKind::Job
                };
                vec![(k.namespace, dk, k.name)]
            })
            .unwrap_or_default(),
        Kind::Replica => {
            let mut v: Vec<_> = c
                .replicas()
                .filter_map(|r| {
                    let s = r.spec.service.service()?;
                    Some((
                        r.metadata.namespace.clone(),
                        DependencyKind::Service,
                        s.to_string(),
                    ))
                })
                .collect();
            v.dedup();
            v
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, kind: DependencyKind, condition: DependencyCondition) -> Dependency {
        Dependency {
            name: name.into(),
            kind,
            condition,
        }
    }

    #[test]
    fn the_gate_opens_when_every_dependency_holds_and_says_what_it_waits_for() {
        use DependencyCondition::*;
        use DependencyKind::*;
        let svc = |running, ready, desired| Observed::Service {
            running,
            ready,
            desired,
        };
        let job = |started, state| Observed::Job { started, state };
        let wait = |m: &str| Gate::Wait(m.to_string());
        let cases: Vec<(Dependency, Observed, Gate)> = vec![
            (
                dep("db", Service, Started),
                Observed::Missing,
                wait("waiting for service db (not found)"),
            ),
            (
                dep("db", Service, Started),
                svc(0, 0, 1),
                wait("waiting for db to start (no replica running)"),
            ),
            (dep("db", Service, Started), svc(1, 0, 1), Gate::Open),
            (
                dep("db", Service, Ready),
                svc(1, 0, 1),
                wait("waiting for db to be ready (0/1)"),
            ),
            (
                dep("db", Service, Ready),
                svc(3, 2, 3),
                wait("waiting for db to be ready (2/3)"),
            ),
            (dep("db", Service, Ready), svc(3, 3, 3), Gate::Open),
            // A service scaled to zero must still show one ready replica.
            (
                dep("db", Service, Ready),
                svc(0, 0, 0),
                wait("waiting for db to be ready (0/1)"),
            ),
            (
                dep("m", Job, Started),
                job(false, JobState::Running),
                wait("waiting for job m to start"),
            ),
            (
                dep("m", Job, Started),
                job(true, JobState::Running),
                Gate::Open,
            ),
            (
                dep("m", Job, Completed),
                job(true, JobState::Running),
                wait("waiting for job m to complete"),
            ),
            (
                dep("m", Job, Completed),
                job(true, JobState::Succeeded),
                Gate::Open,
            ),
            (
                dep("m", Job, Completed),
                job(true, JobState::Failed),
                Gate::Never("will not start: job m failed".into()),
            ),
            (
                dep("m", Job, Completed),
                Observed::Missing,
                wait("waiting for job m (not found)"),
            ),
        ];
        for (d, seen, want) in cases {
            assert_eq!(
                gate(std::slice::from_ref(&d), &|_| seen),
                want,
                "{d:?} {seen:?}"
            );
        }
        // Several: every unmet one is named.
        let deps = [
            dep("db", Service, Ready),
            dep("m", Job, Completed),
            dep("c", Service, Started),
        ];
        let g = gate(&deps, &|d| match d.name.as_str() {
            "db" => svc(1, 0, 1),
            "m" => job(true, JobState::Running),
            _ => svc(1, 1, 1),
        });
        assert_eq!(
            g,
            wait("waiting for db to be ready (0/1), job m to complete")
        );
        assert_eq!(gate(&[], &|_| Observed::Missing), Gate::Open);
    }

    #[test]
    fn the_index_follows_changes_of_the_dependents() {
        use DependencyCondition::*;
        use DependencyKind::*;
        let idx = Dependents::of_services();
        assert!(idx.is_empty());
        idx.set(
            "ns",
            "web",
            &[dep("db", Service, Ready), dep("m", Job, Completed)],
        );
        idx.set("ns", "api", &[dep("db", Service, Started)]);
        assert_eq!(idx.of("ns", Service, "db"), ["api", "web"]);
        assert_eq!(idx.of("ns", Job, "m"), ["web"]);
        assert!(idx.of("other", Service, "db").is_empty());
        assert!(idx.of("ns", Job, "db").is_empty());
        idx.set("ns", "web", &[dep("cache", Service, Started)]);
        assert_eq!(idx.of("ns", Service, "db"), ["api"]);
        assert!(idx.of("ns", Job, "m").is_empty());
        idx.set("ns", "api", &[]);
        idx.set("ns", "web", &[]);
        assert!(idx.is_empty());
        let mut x = crate::model::object::Service::new(
            "x",
            crate::model::object::ServiceSpec::new(
                1,
                crate::model::object::Template::with_command(["x"]),
            ),
        );
        x.metadata.namespace = "ns".into();
        x.spec.depends_on = vec![dep("db", Service, Started)];
        idx.rebuild(&[std::sync::Arc::new(Object::from(x))]);
        assert_eq!(idx.of("ns", Service, "db"), ["x"]);
    }
}
