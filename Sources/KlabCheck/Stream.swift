import KlabResults

extension ResultsFolder {
    /// Streams the whole run through `correlator` (see `stream(_:)` for files cut short).
    @discardableResult
    public func stream(_ correlator: Correlator) throws -> [CutShort] {
        try stream { events, frames in try correlator.run(events: events, frames: frames) }
    }
}
