import KlabSchema

/// Which events to log: a level, then Klogger-style toggles.
public struct TracerConfig: Sendable {
    public var level: Level = .ip
    /// Applied in order after the level: `NAME` or `+NAME` turns an event on, `-NAME` off.
    /// Names may be globs (`TCP_*`, `*PENDINGFRAMES`) and aliases (`IP_SENDPACKET`).
    public var toggles: [String] = []
    /// Backends never to use, as if the kernel lacked them (to see the fallbacks).
    public var disabledBackends: Set<Backend> = []
    /// klab's own TCP_STATE event, for state changes the schema has no event for.
    public var auxiliary = true
    /// Log each event from every site that attaches, not just the first: to compare an
    /// approximate site with the exact one on a kernel that has both.
    public var allSites = false

    public init(level: Level = .ip, toggles: [String] = [], disabledBackends: Set<Backend> = []) {
        self.level = level
        self.toggles = toggles
        self.disabledBackends = disabledBackends
    }

    /// The events this configuration logs, in catalog order.
    public func events() throws -> [EventSpec] {
        var on = Set(Schema.events.filter { $0.logged(at: level) }.map(\.id))
        if auxiliary { on.formUnion(Schema.auxiliary.filter { $0.logged(at: level) }.map(\.id)) }
        for t in toggles {
            let add = !t.hasPrefix("-")
            let pattern = t.hasPrefix("-") || t.hasPrefix("+") ? String(t.dropFirst()) : t
            let hits = Schema.all.filter { e in ([e.name] + e.aliases).contains { glob(pattern, $0) } }
            guard !hits.isEmpty else {
                throw TracerError("--events: '\(pattern)' names no event; `klab schema` lists them", errno: 0)
            }
            for e in hits { if add { on.insert(e.id) } else { on.remove(e.id) } }
        }
        return Schema.all.filter { on.contains($0.id) }
    }
}

/// Shell-style `*` and `?` matching, case-insensitive.
func glob(_ pattern: String, _ name: String) -> Bool {
    let p = Array(pattern.uppercased()), n = Array(name.uppercased())
    func match(_ i: Int, _ j: Int) -> Bool {
        if i == p.count { return j == n.count }
        if p[i] == "*" { return (j...n.count).contains { match(i + 1, $0) } }
        return j < n.count && (p[i] == "?" || p[i] == n[j]) && match(i + 1, j + 1)
    }
    return match(0, 0)
}

/// The site the tracer chose for one event on the running kernel, and why it passed over
/// the more faithful ones.
public struct Selection: Sendable {
    public let event: EventSpec
    public let site: Site?
    public let passedOver: [(site: Site, reason: String)]
    /// With `allSites`: the less faithful sites that attached too.
    public var alsoLogged: [Site] = []

    /// `exact: …`, `approximate: … (relative to …)` or `unavailable: …`.
    public var placement: String {
        if let site { return site.placement }
        let reasons = passedOver.map { "\($0.site.name): \($0.reason)" }
        return "unavailable: " + (reasons.isEmpty ? "no probe site" : reasons.joined(separator: "; "))
    }

    public var verdict: String { site == nil ? "unavailable" : site!.exact ? "exact" : "approximate" }
}
