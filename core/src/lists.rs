//! The delivery lists: the machines the core holds, by state, in `(project, callback, file)`
//! order, filtered and paged without a scan of the files (`GET /v1/deliveries`,
//! `cbctl deliveries`, the console).
//!
//! The core keeps one ordered set of [`ListKey`]s per state (`fold::Tally`); a query walks
//! the sets of the states it asks for, merged in key order. A filter on the project or the
//! callback, or on the callback's target (the origin), is answered by seeking: the walk
//! jumps over every `(project, callback)` group the filter rules out, so a filter that
//! matches one machine in a million costs a seek per group, not a look at each machine.
//! Only per-file callbacks (LightFlow), whose target is the file's own, are tested machine
//! by machine against a target filter.

use std::collections::btree_set::Range;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::config::Callback;
use crate::ids::{CallbackName, CallbackRef, FileId, FileKey, IdError, MachineKey, ProjectId};
use crate::machine::{Machine, StateName};

/// A machine's place in the lists: ordered by project, then callback, then file, so that a
/// project's or a callback's machines are one range.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ListKey {
    /// The file's project.
    pub project: ProjectId,
    /// The callback.
    pub callback: CallbackRef,
    /// The file.
    pub file_id: FileId,
}

impl ListKey {
    /// The list key of a machine.
    pub fn of(key: &MachineKey) -> ListKey {
        ListKey {
            project: key.file.project.clone(),
            callback: key.callback.clone(),
            file_id: key.file.file_id.clone(),
        }
    }

    /// The machine it names.
    pub fn machine_key(&self) -> MachineKey {
        MachineKey {
            file: FileKey::new(self.project.clone(), self.file_id.clone()),
            callback: self.callback.clone(),
        }
    }

    /// Parses a cursor ([`Display`](fmt::Display) form: `project~callback~file_id`; `~` is
    /// in no id grammar).
    pub fn parse(s: &str) -> Result<ListKey, IdError> {
        let mut parts = s.splitn(3, '~');
        let (Some(p), Some(c), Some(f)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(IdError::Cursor);
        };
        Ok(ListKey {
            project: ProjectId::new(p)?,
            callback: CallbackRef::parse(c)?,
            file_id: FileId::new(f)?,
        })
    }

    /// The last key of `(project, callback)`'s group, or of `project`'s with no callback:
    /// a bound to seek past.
    fn group_end(project: &ProjectId, callback: Option<&CallbackRef>) -> ListKey {
        ListKey {
            project: project.clone(),
            callback: callback
                .cloned()
                .unwrap_or_else(|| CallbackRef::File(CallbackName::above_all())),
            file_id: FileId::above_all(),
        }
    }

    /// The first key `(project, callback)`'s group could hold.
    fn group_start(project: &ProjectId, callback: &CallbackRef) -> ListKey {
        ListKey {
            project: project.clone(),
            callback: callback.clone(),
            file_id: FileId::below_all(),
        }
    }
}

impl fmt::Display for ListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}~{}", self.project, self.callback, self.file_id)
    }
}

/// What a delivery list asks for. Every filter given must match.
pub struct DeliveryQuery<'a> {
    /// Only machines in this state.
    pub state: Option<StateName>,
    /// Only this project's machines.
    pub project: Option<ProjectId>,
    /// Only this callback's machines (a project callback by name, or `file:name`).
    pub callback: Option<CallbackRef>,
    /// Only machines whose callback configuration this accepts (e.g. its target's origin):
    /// asked once per project callback, and per machine for per-file callbacks.
    pub target: Option<&'a dyn Fn(&Callback) -> bool>,
    /// Only machines after this key (the previous page's `next`).
    pub after: Option<ListKey>,
    /// At most this many.
    pub limit: usize,
}

/// One page of a delivery list.
pub struct Deliveries<'a> {
    /// The machines, in key order, with their state.
    pub items: Vec<(ListKey, &'a Machine)>,
    /// The cursor of the next page, when there may be more.
    pub next: Option<ListKey>,
}

/// What the lists need of the core (whose borrow is `'c`): the sets, and each machine and
/// callback.
pub(crate) trait ListSource<'c> {
    /// The ordered keys of the machines in `state`.
    fn keys_in(&self, state: StateName) -> &BTreeSet<ListKey>;
    /// The machine of `key`.
    fn machine_of(&self, key: &ListKey) -> Option<&'c Machine>;
    /// The configuration of a project callback.
    fn project_callback(&self, project: &ProjectId, name: &CallbackName) -> Option<&Arc<Callback>>;
    /// The configuration of a file's own callback.
    fn file_callback(&self, key: &ListKey) -> Option<&Arc<Callback>>;
}

/// One page of the machines `q` asks for.
pub(crate) fn deliveries<'c, S: ListSource<'c>>(
    source: &S,
    q: &DeliveryQuery<'_>,
) -> Deliveries<'c> {
    let states: Vec<StateName> = match q.state {
        Some(s) => vec![s],
        None => StateName::ALL.to_vec(),
    };
    let mut walks: Vec<Walk<'_, '_, S>> = states
        .into_iter()
        .map(|state| Walk::new(source, source.keys_in(state), q))
        .collect();
    let mut heads: Vec<Option<&ListKey>> = walks.iter_mut().map(Walk::next).collect();
    let mut items: Vec<(ListKey, &'c Machine)> = Vec::new();
    let mut next = None;
    // Merge the states' walks in key order (a machine is in one state: no repeats).
    while let Some(i) = (0..heads.len())
        .filter(|i| heads[*i].is_some())
        .min_by_key(|i| heads[*i])
    {
        let key = heads[i].expect("filtered above");
        if items.len() == q.limit {
            next = items.last().map(|(k, _)| k.clone());
            break;
        }
        if let Some(m) = source.machine_of(key) {
            items.push((key.clone(), m));
        }
        heads[i] = walks[i].next();
    }
    Deliveries { items, next }
}

/// The keys of one state's set that a query's filters let through, in order, seeking over
/// the groups they rule out.
struct Walk<'a, 'q, S> {
    source: &'a S,
    set: &'a BTreeSet<ListKey>,
    q: &'q DeliveryQuery<'q>,
    /// Where the next seek starts.
    from: Bound<ListKey>,
    /// The rest of the group the walk is reading, when the filters let it through.
    group: Option<Range<'a, ListKey>>,
    done: bool,
}

/// What a walk does with the group of the key a seek found.
enum Verdict {
    /// Read it.
    Take,
    /// Seek again from here.
    SeekTo(Bound<ListKey>),
    /// No later key can match.
    Past,
}

impl<'a, 'q, 'c, S: ListSource<'c>> Walk<'a, 'q, S> {
    fn new(source: &'a S, set: &'a BTreeSet<ListKey>, q: &'q DeliveryQuery<'q>) -> Self {
        let mut from = match &q.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        // Start at the filtered project's (and callback's) first key, if that is later.
        if let Some(project) = &q.project {
            let first = CallbackRef::Project(CallbackName::below_all());
            let start = ListKey::group_start(project, q.callback.as_ref().unwrap_or(&first));
            if !matches!(&from, Bound::Excluded(after) if *after >= start) {
                from = Bound::Included(start);
            }
        }
        Walk {
            source,
            set,
            q,
            from,
            group: None,
            done: false,
        }
    }

    fn next(&mut self) -> Option<&'a ListKey> {
        loop {
            if let Some(key) = self.group.as_mut().and_then(Iterator::next) {
                if self.machine_matches(key) {
                    return Some(key);
                }
                continue;
            }
            self.group = None;
            if self.done {
                return None;
            }
            let Some(key) = self.set.range((self.from.clone(), Bound::Unbounded)).next() else {
                self.done = true;
                return None;
            };
            match self.verdict(key) {
                Verdict::Past => self.done = true,
                Verdict::SeekTo(from) => self.from = from,
                Verdict::Take => {
                    let end = ListKey::group_end(&key.project, Some(&key.callback));
                    let group = (Bound::Included(key.clone()), Bound::Included(end.clone()));
                    self.group = Some(self.set.range(group));
                    self.from = Bound::Excluded(end);
                }
            }
        }
    }

    /// Whether the filters let `key`'s `(project, callback)` group through.
    fn verdict(&self, key: &ListKey) -> Verdict {
        if let Some(project) = &self.q.project {
            if key.project != *project {
                // The walk starts at the project: a key elsewhere is past it.
                return Verdict::Past;
            }
        }
        if let Some(callback) = &self.q.callback {
            if key.callback < *callback {
                let start = ListKey::group_start(&key.project, callback);
                return Verdict::SeekTo(Bound::Included(start));
            }
            if key.callback > *callback {
                if self.q.project.is_some() {
                    return Verdict::Past;
                }
                let past = ListKey::group_end(&key.project, None);
                return Verdict::SeekTo(Bound::Excluded(past));
            }
        }
        if let (Some(target), CallbackRef::Project(name)) = (self.q.target, &key.callback) {
            let accepted = self
                .source
                .project_callback(&key.project, name)
                .is_some_and(|c| target(c));
            if !accepted {
                let past = ListKey::group_end(&key.project, Some(&key.callback));
                return Verdict::SeekTo(Bound::Excluded(past));
            }
        }
        Verdict::Take
    }

    /// The filters a group's verdict cannot answer: a per-file callback's target.
    fn machine_matches(&self, key: &ListKey) -> bool {
        match (self.q.target, &key.callback) {
            (Some(target), CallbackRef::File(_)) => {
                self.source.file_callback(key).is_some_and(|c| target(c))
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ids::{Seq, Timestamp};
    use crate::machine::Opening;

    /// Lists over hand-made sets: several projects, project and per-file callbacks, two
    /// targets; one machine stands for all (the walk never reads it).
    struct Fixture {
        lists: [BTreeSet<ListKey>; 5],
        project_callbacks: BTreeMap<(ProjectId, CallbackName), Arc<Callback>>,
        file_callbacks: BTreeMap<ListKey, Arc<Callback>>,
        machine: Machine,
    }

    impl<'c> ListSource<'c> for &'c Fixture {
        fn keys_in(&self, state: StateName) -> &BTreeSet<ListKey> {
            let i = StateName::ALL.iter().position(|s| *s == state).unwrap();
            &self.lists[i]
        }
        fn machine_of(&self, _: &ListKey) -> Option<&'c Machine> {
            Some(&self.machine)
        }
        fn project_callback(&self, p: &ProjectId, n: &CallbackName) -> Option<&Arc<Callback>> {
            self.project_callbacks.get(&(p.clone(), n.clone()))
        }
        fn file_callback(&self, key: &ListKey) -> Option<&Arc<Callback>> {
            self.file_callbacks.get(key)
        }
    }

    fn callback(to_b: bool) -> Arc<Callback> {
        let host = if to_b { "b.example" } else { "a.example" };
        Arc::new(Callback::from_json(&format!(r#"{{"url":"https://{host}/cb"}}"#)).unwrap())
    }

    fn key(p: u8, c: u8, f: u8) -> ListKey {
        let name = CallbackName::new(["a", "b", "c"][usize::from(c % 3)]).unwrap();
        ListKey {
            project: ProjectId::new(&format!("p{p}")).unwrap(),
            callback: if c < 3 {
                CallbackRef::Project(name)
            } else {
                CallbackRef::File(name)
            },
            file_id: FileId::new(&format!("f{f}")).unwrap(),
        }
    }

    /// (project, callback, file, state, target) per machine, and per project callback its
    /// target; then a query's filters and a page size.
    type Case = (
        Vec<(u8, u8, u8, u8, bool)>,
        Vec<bool>,
        (Option<u8>, Option<u8>, Option<u8>, Option<bool>, usize),
    );

    fn case() -> impl Strategy<Value = Case> {
        (
            prop::collection::vec((0..4u8, 0..6u8, 0..12u8, 0..5u8, any::<bool>()), 0..80),
            prop::collection::vec(any::<bool>(), 12),
            (
                prop::option::of(0..5u8),
                prop::option::of(0..4u8),
                prop::option::of(0..6u8),
                prop::option::of(any::<bool>()),
                1..7usize,
            ),
        )
    }

    proptest! {
        /// Paging through `deliveries` with any filters yields exactly the machines that a
        /// look at every machine keeps, in key order, each once.
        #[test]
        fn pages_list_exactly_what_the_filters_keep((machines, targets, query) in case()) {
            let mut f = Fixture {
                lists: Default::default(),
                project_callbacks: BTreeMap::new(),
                file_callbacks: BTreeMap::new(),
                machine: Machine::opened_by(
                    Opening { seq: Seq(1), at: Timestamp(0) },
                    &callback(false),
                ),
            };
            for p in 0..4u8 {
                for c in 0..3u8 {
                    let k = key(p, c, 0);
                    let to_b = targets[usize::from(p * 3 + c)];
                    f.project_callbacks.insert((k.project, k.callback.name().clone()), callback(to_b));
                }
            }
            let mut state_of = BTreeMap::new();
            for (p, c, file, state, to_b) in machines {
                let k = key(p, c, file);
                if state_of.contains_key(&k) {
                    continue;
                }
                if c >= 3 {
                    f.file_callbacks.insert(k.clone(), callback(to_b));
                }
                f.lists[usize::from(state)].insert(k.clone());
                state_of.insert(k, StateName::ALL[usize::from(state)]);
            }
            let (state, project, cb, to_b, limit) = query;
            let target_of = |k: &ListKey| -> bool {
                let c = match &k.callback {
                    CallbackRef::Project(n) => &f.project_callbacks[&(k.project.clone(), n.clone())],
                    CallbackRef::File(_) => &f.file_callbacks[k],
                };
                c.target.to_url().contains("b.example")
            };
            let wanted = |b: bool| move |c: &Callback| c.target.to_url().contains("b.example") == b;
            let wanted = to_b.map(wanted);
            let expected: Vec<ListKey> = state_of
                .iter()
                .filter(|(k, s)| {
                    state.is_none_or(|i| StateName::ALL[usize::from(i)] == **s)
                        && project.is_none_or(|p| k.project.as_str() == format!("p{p}"))
                        && cb.is_none_or(|c| k.callback == key(0, c, 0).callback)
                        && to_b.is_none_or(|b| target_of(k) == b)
                })
                .map(|(k, _)| k.clone())
                .collect();
            let mut got: Vec<ListKey> = Vec::new();
            let mut after = None;
            for _ in 0..100 {
                let q = DeliveryQuery {
                    state: state.map(|i| StateName::ALL[usize::from(i)]),
                    project: project.map(|p| ProjectId::new(&format!("p{p}")).unwrap()),
                    callback: cb.map(|c| key(0, c, 0).callback),
                    target: wanted.as_ref().map(|w| w as &dyn Fn(&Callback) -> bool),
                    after: after.clone(),
                    limit,
                };
                let page = deliveries(&&f, &q);
                prop_assert!(page.items.len() <= limit);
                got.extend(page.items.into_iter().map(|(k, _)| k));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let k = key(1, 4, 7);
        assert_eq!(k.to_string(), "p1~file:b~f7");
        assert_eq!(ListKey::parse(&k.to_string()), Ok(k));
        assert_eq!(ListKey::parse("p1~a"), Err(IdError::Cursor));
        assert!(ListKey::parse("p1~a~f 1").is_err());
    }
}
