//! A route as the table keeps it: everything in one allocation, behind one pointer.
//!
//! `model::Route` is the wire type (the route stream, the admin API): an `AppId`, a
//! `Vec` of `Domain`s and a `Vec` of `Backend`s, six heap allocations or more per
//! route. A table of a million routes holds its routes for as long as it runs, so here
//! a route is one reference-counted byte string, and a handle to it ([`Route`]) is a
//! single pointer: the table's maps store handles, never copies of names.
//!
//! # Layout
//!
//! Little-endian integers. `int` is a `u16`, or a `u32` in a *wide* route (one whose
//! text is 64 KiB or longer, or that has 65,536 domains or backends or more).
//!
//! | bytes | content |
//! | --- | --- |
//! | `u32` | length of the whole byte string (what turns the thin pointer back into the `Arc<[u8]>` it came from) |
//! | `u8` | flags: [`FAIL_OPEN`], [`WIDE`], [`WEIGHTED`] |
//! | `u8` | length of the app id (at most 63) |
//! | `int` × 2 | domain count, backend count |
//! | `int` per domain, then per backend | where its text ends, counted from the start of the text |
//! | `u16` per backend | its weight; absent when every weight is 1 ([`WEIGHTED`] unset) |
//! | text | the app id, the domains, the backend addresses, back to back |
//!
//! Everything was validated by `model` before it got here: the text is made of whole
//! UTF-8 strings, and every accessor slices it at the boundaries recorded above.

use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::Arc;

/// Flag: every backend failed its health check and all are listed.
const FAIL_OPEN: u8 = 1;
/// Flag: counts and text offsets are `u32`s (else `u16`s).
const WIDE: u8 = 2;
/// Flag: the weights are stored (else every backend weighs 1).
const WEIGHTED: u8 = 4;
/// Length, flags and app id length.
const FIXED: usize = 6;

/// A shared, immutable route: a thin handle to one `Arc<[u8]>` laid out as the module
/// docs say. Cloning it bumps a reference count.
pub struct Route {
    /// The data pointer of an `Arc<[u8]>` (from `Arc::into_raw`), whose first four bytes
    /// hold the slice's length.
    ptr: NonNull<u8>,
}

// SAFETY: a `Route` owns one strong count of an `Arc<[u8]>`, which is `Send` and `Sync`,
// and never writes to the bytes.
unsafe impl Send for Route {}
// SAFETY: as above.
unsafe impl Sync for Route {}

impl Route {
    fn from_bytes(bytes: &[u8]) -> Route {
        assert!(
            bytes.len() >= FIXED && read_u32(bytes, 0) as usize == bytes.len(),
            "a route's bytes start with their length"
        );
        let arc: Arc<[u8]> = Arc::from(bytes);
        let ptr = Arc::into_raw(arc).cast::<u8>().cast_mut();
        Route {
            ptr: NonNull::new(ptr).expect("Arc::into_raw is never null"),
        }
    }

    /// The `*const [u8]` that `Arc::into_raw` returned for this route.
    fn raw(&self) -> *const [u8] {
        // SAFETY: this handle holds a strong count, so the allocation is alive, and its
        // first four bytes are the length (checked in `from_bytes`, never written since).
        let len = unsafe { ptr::read(self.ptr.as_ptr().cast::<[u8; 4]>()) };
        ptr::slice_from_raw_parts(self.ptr.as_ptr(), u32::from_le_bytes(len) as usize)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `raw` is the slice `Arc::into_raw` gave, alive while `self` is.
        unsafe { &*self.raw() }
    }

    fn view(&self) -> View<'_> {
        View::new(self.bytes())
    }

    /// Whether two handles are the same route (not merely equal ones).
    pub fn ptr_eq(a: &Route, b: &Route) -> bool {
        a.ptr == b.ptr
    }

    /// The application.
    pub fn app(&self) -> &str {
        self.view().app()
    }

    /// How many domains it answers on.
    pub fn domain_count(&self) -> usize {
        self.view().domains
    }

    /// Its `i`th domain (`*.example.com` for a wildcard). Panics if there is none.
    pub fn domain(&self, i: usize) -> &str {
        self.view().domain(i)
    }

    /// The names it answers on, in the order it was given them.
    pub fn domains(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        let view = self.view();
        (0..view.domains).map(move |i| view.domain(i))
    }

    /// Where the key of each domain (the name, or a wildcard's suffix) sits in the
    /// route's bytes, `(start, len)`, and whether the domain is a wildcard. A
    /// [`key`](Route::key) of the first two is the key itself, with nothing to work out.
    pub(crate) fn domain_keys(&self) -> impl ExactSizeIterator<Item = (u32, u32, bool)> + '_ {
        let view = self.view();
        (0..view.domains).map(move |i| {
            let (mut start, end) = view.span(i);
            let wildcard = view.bytes[start..end].starts_with(b"*.");
            if wildcard {
                start += 2;
            }
            // A route is shorter than 4 GiB (its first four bytes are its length).
            (start as u32, (end - start) as u32, wildcard)
        })
    }

    /// `len` bytes from `start` of the route's bytes (see [`domain_keys`](Route::domain_keys)).
    pub(crate) fn key(&self, start: u32, len: u32) -> &[u8] {
        let start = start as usize;
        &self.bytes()[start..start + len as usize]
    }

    /// The backends to use now.
    pub fn backends(&self) -> Backends<'_> {
        Backends { view: self.view() }
    }

    /// Whether every backend failed its health check (and all are listed anyway).
    pub fn fail_open(&self) -> bool {
        self.view().flags & FAIL_OPEN != 0
    }

    /// Bytes of its one allocation's payload (without the allocator's and the reference
    /// counts' overhead).
    pub fn encoded_len(&self) -> usize {
        self.bytes().len()
    }

    /// The route as the wire type, for the admin API and for tests. Allocates.
    pub fn to_model(&self) -> model::Route {
        model::Route {
            app: self
                .app()
                .parse()
                .expect("validated when the route was made"),
            domains: self
                .domains()
                .map(|d| d.parse().expect("validated when the route was made"))
                .collect(),
            backends: self
                .backends()
                .iter()
                .map(|b| {
                    model::Backend::new(b.addr(), b.weight())
                        .expect("validated when the route was made")
                })
                .collect(),
            fail_open: self.fail_open(),
        }
    }

    /// The compact form of a (validated) wire route.
    pub fn from_model(route: &model::Route) -> Route {
        Encoder::default().encode_model(route)
    }
}

impl Clone for Route {
    fn clone(&self) -> Route {
        // SAFETY: `raw` is a pointer from `Arc::into_raw` whose count this handle holds.
        unsafe { Arc::increment_strong_count(self.raw()) };
        Route { ptr: self.ptr }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        // SAFETY: gives back the strong count this handle holds, exactly once.
        drop(unsafe { Arc::from_raw(self.raw()) });
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("app", &self.app())
            .field("domains", &self.domains().collect::<Vec<_>>())
            .field("backends", &self.backends().iter().collect::<Vec<_>>())
            .field("fail_open", &self.fail_open())
            .finish()
    }
}

impl PartialEq<model::Route> for Route {
    fn eq(&self, other: &model::Route) -> bool {
        self.app() == other.app.as_str()
            && self.fail_open() == other.fail_open
            && self.domains().eq(other.domains.iter().map(|d| d.as_str()))
            && self.backends().len() == other.backends.len()
            && self
                .backends()
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| a.addr() == b.addr() && a.weight() == b.weight())
    }
}

/// A route's backends, without copying them.
#[derive(Clone, Copy)]
pub struct Backends<'a> {
    view: View<'a>,
}

impl<'a> Backends<'a> {
    /// How many there are.
    pub fn len(&self) -> usize {
        self.view.backends
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th one. Panics if there is none.
    pub fn get(&self, i: usize) -> BackendRef<'a> {
        assert!(
            i < self.view.backends,
            "backend {i} of {}",
            self.view.backends
        );
        BackendRef {
            addr: self.view.text(self.view.domains + i),
            weight: self.view.weight(i),
        }
    }

    /// All of them, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = BackendRef<'a>> + 'a {
        let backends = *self;
        (0..backends.len()).map(move |i| backends.get(i))
    }
}

impl fmt::Debug for Backends<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One backend of a route: `host:port` and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRef<'a> {
    addr: &'a str,
    weight: u16,
}

impl<'a> BackendRef<'a> {
    /// `host:port`, as `model::Backend::addr`.
    pub fn addr(&self) -> &'a str {
        self.addr
    }

    /// The relative weight, 1..=1000.
    pub fn weight(&self) -> u16 {
        self.weight
    }
}

/// A route's bytes with the positions of its parts worked out.
#[derive(Clone, Copy)]
struct View<'a> {
    bytes: &'a [u8],
    flags: u8,
    app_len: usize,
    domains: usize,
    backends: usize,
    /// Where the text offsets start.
    ends_at: usize,
    /// Where the weights start (if stored).
    weights_at: usize,
    /// Where the text starts.
    text_at: usize,
}

impl<'a> View<'a> {
    fn new(bytes: &'a [u8]) -> View<'a> {
        let flags = bytes[4];
        let wide = flags & WIDE != 0;
        let int = if wide { 4 } else { 2 };
        let domains = read_int(bytes, FIXED, wide);
        let backends = read_int(bytes, FIXED + int, wide);
        let ends_at = FIXED + 2 * int;
        let weights_at = ends_at + (domains + backends) * int;
        let text_at = if flags & WEIGHTED != 0 {
            weights_at + 2 * backends
        } else {
            weights_at
        };
        View {
            bytes,
            flags,
            app_len: usize::from(bytes[5]),
            domains,
            backends,
            ends_at,
            weights_at,
            text_at,
        }
    }

    fn wide(&self) -> bool {
        self.flags & WIDE != 0
    }

    /// Where the text of item `k` ends (items: the domains, then the backends).
    fn end(&self, k: usize) -> usize {
        let int = if self.wide() { 4 } else { 2 };
        read_int(self.bytes, self.ends_at + k * int, self.wide())
    }

    /// Where the text of item `k` starts and ends in the route's bytes.
    fn span(&self, k: usize) -> (usize, usize) {
        let start = if k == 0 {
            self.app_len
        } else {
            self.end(k - 1)
        };
        (self.text_at + start, self.text_at + self.end(k))
    }

    /// The text of item `k`.
    fn text(&self, k: usize) -> &'a str {
        let (start, end) = self.span(k);
        self.str(start, end)
    }

    fn str(&self, start: usize, end: usize) -> &'a str {
        let bytes = &self.bytes[start..end];
        // SAFETY: the text is whole `&str`s copied back to back (`Encoder`), and `start`
        // and `end` are boundaries between them, recorded when they were copied.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn app(&self) -> &'a str {
        self.str(self.text_at, self.text_at + self.app_len)
    }

    fn domain(&self, i: usize) -> &'a str {
        assert!(i < self.domains, "domain {i} of {}", self.domains);
        self.text(i)
    }

    fn weight(&self, i: usize) -> u16 {
        if self.flags & WEIGHTED == 0 {
            1
        } else {
            let at = self.weights_at + 2 * i;
            u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_int(bytes: &[u8], at: usize, wide: bool) -> usize {
    if wide {
        read_u32(bytes, at) as usize
    } else {
        usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
    }
}

/// Makes routes from their parts, reusing its buffers from one route to the next:
/// [`start`](Encoder::start), every [`domain`](Encoder::domain), every
/// [`backend`](Encoder::backend), then [`finish`](Encoder::finish).
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    flags: u8,
    app_len: u8,
    domains: usize,
    ends: Vec<usize>,
    weights: Vec<u16>,
    text: Vec<u8>,
    bytes: Vec<u8>,
}

impl Encoder {
    /// The compact form of a (validated) wire route.
    pub(crate) fn encode_model(&mut self, route: &model::Route) -> Route {
        self.start(route.app.as_str(), route.fail_open);
        for domain in &route.domains {
            self.domain(domain.as_str());
        }
        for backend in &route.backends {
            self.backend(backend.addr(), backend.weight());
        }
        self.finish()
    }

    /// Begins a route. `app` is a valid `AppId` (at most 63 bytes).
    pub(crate) fn start(&mut self, app: &str, fail_open: bool) {
        self.flags = if fail_open { FAIL_OPEN } else { 0 };
        self.app_len = u8::try_from(app.len()).expect("app ids are at most 63 bytes");
        self.domains = 0;
        self.ends.clear();
        self.weights.clear();
        self.text.clear();
        self.text.extend_from_slice(app.as_bytes());
    }

    /// Adds a domain; all of them come before the first backend.
    pub(crate) fn domain(&mut self, domain: &str) {
        debug_assert!(self.weights.is_empty(), "domains come before backends");
        self.text.extend_from_slice(domain.as_bytes());
        self.ends.push(self.text.len());
        self.domains += 1;
    }

    /// Adds a backend.
    pub(crate) fn backend(&mut self, addr: &str, weight: u16) {
        self.text.extend_from_slice(addr.as_bytes());
        self.ends.push(self.text.len());
        self.weights.push(weight);
    }

    /// The route.
    pub(crate) fn finish(&mut self) -> Route {
        let backends = self.weights.len();
        let wide = self.text.len() > usize::from(u16::MAX)
            || self.domains > usize::from(u16::MAX)
            || backends > usize::from(u16::MAX);
        let weighted = self.weights.iter().any(|&w| w != 1);
        let mut flags = self.flags;
        if wide {
            flags |= WIDE;
        }
        if weighted {
            flags |= WEIGHTED;
        }
        let int = if wide { 4 } else { 2 };
        let len = FIXED
            + int * (2 + self.ends.len())
            + if weighted { 2 * backends } else { 0 }
            + self.text.len();
        let len32 = u32::try_from(len).expect("a route is far smaller than 4 GiB");
        let bytes = &mut self.bytes;
        bytes.clear();
        bytes.reserve(len);
        bytes.extend_from_slice(&len32.to_le_bytes());
        bytes.push(flags);
        bytes.push(self.app_len);
        let put = |bytes: &mut Vec<u8>, n: usize| {
            if wide {
                bytes.extend_from_slice(&(n as u32).to_le_bytes());
            } else {
                bytes.extend_from_slice(&(n as u16).to_le_bytes());
            }
        };
        put(bytes, self.domains);
        put(bytes, backends);
        for &end in &self.ends {
            put(bytes, end);
        }
        if weighted {
            for w in &self.weights {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        bytes.extend_from_slice(&self.text);
        debug_assert_eq!(bytes.len(), len);
        Route::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(
        app: &str,
        domains: &[&str],
        backends: &[(&str, u16)],
        fail_open: bool,
    ) -> model::Route {
        model::Route {
            app: app.parse().unwrap(),
            domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
            backends: backends
                .iter()
                .map(|(a, w)| model::Backend::new(*a, *w).unwrap())
                .collect(),
            fail_open,
        }
    }

    #[test]
    fn a_route_keeps_every_part() {
        for wire in [
            model(
                "web",
                &["web.test", "*.web.test"],
                &[
                    ("127.0.0.1:8080", 3),
                    ("[::1]:8081", 1000),
                    ("backend.internal:80", 1),
                ],
                true,
            ),
            model(
                "plain",
                &["plain.test"],
                &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
                false,
            ),
            model("nothing", &[], &[], false),
        ] {
            let route = Route::from_model(&wire);
            assert_eq!(route, wire);
            assert_eq!(route.to_model(), wire);
            assert_eq!(route.app(), wire.app.as_str());
            assert_eq!(route.domain_count(), wire.domains.len());
            let copy = route.clone();
            assert!(Route::ptr_eq(&route, &copy));
            drop(route);
            assert_eq!(copy.to_model(), wire);
        }
    }

    #[test]
    fn weights_of_one_take_no_room() {
        let ones = Route::from_model(&model("a", &["a.test"], &[("10.0.0.1:80", 1)], false));
        let two = Route::from_model(&model("a", &["a.test"], &[("10.0.0.1:80", 2)], false));
        assert_eq!(ones.encoded_len() + 2, two.encoded_len());
        assert_eq!(two.backends().get(0).weight(), 2);
    }

    #[test]
    fn a_route_with_more_than_64_kib_of_text_is_wide() {
        let domains: Vec<String> = (0..400)
            .map(|i| format!("{x}.{x}.{x}.d{i}.example.com", x = "x".repeat(60)))
            .collect();
        let names: Vec<&str> = domains.iter().map(String::as_str).collect();
        let wire = model("big", &names, &[("10.0.0.1:80", 7)], false);
        let route = Route::from_model(&wire);
        assert!(route.view().wide());
        assert_eq!(route.to_model(), wire);
        assert_eq!(route.domain(399), domains[399]);
    }

    #[test]
    fn handles_are_shared_across_threads() {
        let route = Route::from_model(&model("a", &["a.test"], &[("10.0.0.1:80", 1)], false));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let route = route.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let again = route.clone();
                        assert_eq!(again.app(), "a");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(route.domain(0), "a.test");
    }
}
