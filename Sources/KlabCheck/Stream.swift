import KlabResults
import KlabSchema

extension ResultsFolder {
    /// Streams the whole run through `correlator`, then checks the capture ended where the
    /// run's did. Files cut short are read up to their last whole record, and a run that did
    /// not end as far as its files go: the returned list says which file and where.
    @discardableResult
    public func stream(_ correlator: Correlator) throws -> [CutShort] {
        let frames = try frames(), events = try EventReader(eventsFile)
        try correlator.run(events: events, frames: frames)
        var cut = [events.cutShort, frames.cutShort].compactMap { $0 }
        guard complete, let info = header.capture else {
            cut.append(CutShort(file: "run.json", byte: -1, what: "the run did not end (it was killed or crashed): its files were read as far as they go",
                                wholeRecords: 0))
            return cut
        }
        if let n = header.records, events.records < n, events.cutShort == nil {
            cut.append(CutShort(file: "events.bin", byte: events.records * TraceEvent.recordSize, what: "record \(events.records + 1) of \(n)",
                                wholeRecords: events.records))
        }
        if frames.cutShort == nil, frames.count < info.frames {
            cut.append(CutShort(file: "capture.pcap", byte: -1, what: "holds \(frames.count) of the run's \(info.frames) frames", wholeRecords: frames.count))
        } else if frames.cutShort == nil, frames.count != info.frames || frames.last != info.last_realtime_ns {
            throw ResultsError(captureFile, "holds \(frames.count) frames up to \(frames.last.map(ResultsFolder.clock) ?? "none"), but this run captured "
                               + "\(info.frames) up to \(info.last_realtime_ns.map(ResultsFolder.clock) ?? "none") (run.json): from another run")
        }
        return cut
    }
}
