import KlabSchema

/// An open-addressing hash table from 64-bit keys to values, for the join's lookups on every
/// record: Swift's Dictionary hashes each key with SipHash, which cost more than the join
/// itself. The keys are mixed by one multiplication (most are digests already). Each key
/// and its value share one entry (one cache miss per lookup, where the table is bigger than
/// the cache). Entries are not removed one by one: when the table fills up, the stale ones
/// (`stale`, given by the caller) are swept out at once, and it grows only if that freed too
/// little.
struct KeyTable<Value> {
    private struct Entry { var key: UInt64; var value: Value? }
    private var entries = [Entry](repeating: Entry(key: 0, value: nil), count: 1024)
    private var shift: UInt64 = 54
    private(set) var count = 0

    @inline(__always) private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    /// The entry that holds `key`, or the empty one where it would go.
    @inline(__always) private func find(_ key: UInt64) -> Int {
        let mask = entries.count - 1
        var i = home(key)
        while entries[i].value != nil, entries[i].key != key { i = (i + 1) & mask }
        return i
    }

    subscript(key: UInt64) -> Value? { entries[find(key)].value }

    /// Sets `key`'s value; returns the one it replaces.
    @discardableResult
    mutating func set(_ key: UInt64, _ value: Value, stale: (Value) -> Bool) -> Value? {
        let i = find(key)
        let old = entries[i].value
        entries[i] = Entry(key: key, value: value)
        if old == nil {
            count += 1
            if count * 2 > entries.count {
                let before = count
                rebuild(capacity: entries.count, stale)
                if count * 4 > entries.count || count == before { rebuild(capacity: entries.count * 2, stale) }
            }
        }
        return old
    }

    /// Rehashes the entries that are not stale into `capacity` entries.
    private mutating func rebuild(capacity: Int, _ stale: (Value) -> Bool) {
        let old = entries
        entries = [Entry](repeating: Entry(key: 0, value: nil), count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
        count = 0
        for e in old {
            guard let v = e.value, !stale(v) else { continue }
            entries[find(e.key)] = e
            count += 1
        }
    }
}

/// Something worked out once per (event, probe) and then looked up per record: an array
/// slot instead of a hashed key.
struct ByKind<Value> {
    private static var probes: Int { 512 }
    private var values: [Value?] = []

    /// The value for `e`'s event and probe, made by `make` the first time.
    @inline(__always) mutating func get(_ e: TraceEvent, _ make: () -> Value) -> Value {
        let i = Int(e.event) &* Self.probes &+ Int(e.probe)
        guard e.probe < Self.probes else { return make() }
        if i >= values.count { values += [Value?](repeating: nil, count: i + 1 - values.count) }
        if let v = values[i] { return v }
        let v = make()
        values[i] = v
        return v
    }
}

/// The events joined to the window's frames: each frame's in a list through one pool, so a
/// frame costs no array of its own.
struct EventLists {
    struct List {
        var first: Int32 = -1, last: Int32 = -1
        var isEmpty: Bool { first < 0 }
    }
    private var pool: [TraceEvent] = []
    private var next: [Int32] = []
    private var free: Int32 = -1

    mutating func append(_ e: TraceEvent, to list: inout List) {
        let n: Int32
        if free >= 0 {
            n = free
            free = next[Int(n)]
            pool[Int(n)] = e
            next[Int(n)] = -1
        } else {
            n = Int32(pool.count)
            pool.append(e)
            next.append(-1)
        }
        if list.last >= 0 { next[Int(list.last)] = n } else { list.first = n }
        list.last = n
    }

    /// Whether an event of `list` satisfies `test`.
    func contains(_ list: List, where test: (TraceEvent) -> Bool) -> Bool {
        var n = list.first
        while n >= 0 {
            if test(pool[Int(n)]) { return true }
            n = next[Int(n)]
        }
        return false
    }

    /// Moves `list`'s events, in order, to the end of `out`, and frees its entries.
    mutating func take(_ list: List, into out: inout [TraceEvent]) {
        var n = list.first
        while n >= 0 {
            out.append(pool[Int(n)])
            let after = next[Int(n)]
            next[Int(n)] = free
            free = n
            n = after
        }
    }
}
