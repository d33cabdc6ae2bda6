import Foundation
import Testing

/// The views of a run in the tools people use: tshark reads capture.pcapng (packet count,
/// events as comments, directions, one packet id at both ends of a wire hop), trace.json
/// has a process per host and flows with both ends, and headless Chromium renders
/// report.html with its key parts and no console error.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct ExportTests {
    static func tool(_ name: String) -> String? {
        ["/usr/bin/\(name)", "/usr/local/bin/\(name)"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// A tool the test needs: missing fails under CI (lab/setup installs it), else skips.
    func need(_ name: String) throws -> String? {
        if let t = Self.tool(name) { return t }
        if Privileged.ci { Issue.record("\(name) is missing: lab/setup installs it"); return nil }
        print("SKIP: \(name) is not installed (lab/setup installs it)")
        return nil
    }

    func run(_ exe: String, _ args: [String]) throws -> Finished {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        (p.standardOutput, p.standardError) = (out, err)
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Finished(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    func wireRun() throws -> (out: String, dir: String) {
        let out = try temporaryDirectory()
        let r = try klab(["run", "lab/scenarios/wire-ping.yaml", "--out", out])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        return (out, "\(out)/wire-ping")
    }

    @Test func tsharkReadsThePcapngWithEventsDirectionsAndPacketIDs() throws {
        guard let tshark = try need("tshark") else { return }
        let (out, dir) = try wireRun()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let pcap = try PcapFile(path: "\(dir)/capture.pcap")
        let r = try run(tshark, ["-r", "\(dir)/capture.pcapng", "-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "frame.interface_name",
                                 "-e", "frame.packet_flags_direction", "-e", "frame.packet_id", "-e", "frame.comment"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = r.stdout.split(separator: "\n").map { $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == pcap.records.count && rows.count > 0, "tshark read \(rows.count) packets, the capture holds \(pcap.records.count)")
        for (row, rec) in zip(rows, pcap.records) where row.count >= 5 {
            #expect(row[1] == (rec.link == 0 ? "kl-a" : "kl-b"))
            #expect(UInt32(row[2].dropFirst(2), radix: 16) == (rec.intoHost ? 1 : 2), "direction of frame \(row[0])")
            #expect(UInt64(row[3]) == rec.packetID)
        }
        // Every comment lists kernel events; the request's journey starts with IP_SENDBUFFER where it leaves a.
        #expect(rows.allSatisfy { $0.count >= 5 && ($0[4].contains("IP_SENDBUFFER") || $0[4].contains("IP_RECEIVEPACKET")) }, "\(rows)")
        // Both ends of each wire hop carry the same packet id: once out of one link, once into the other.
        let byID = Dictionary(grouping: rows.filter { $0.count >= 4 }, by: { $0[3] })
        #expect(byID.count == rows.count / 2 && byID.values.allSatisfy { $0.count == 2 && $0[0][1] != $0[1][1] && $0[0][2] != $0[1][2] })
        // The run's header is the section's comment.
        let info = try run("/usr/bin/capinfos", ["-k", "\(dir)/capture.pcapng"])
        #expect(info.stdout.contains("wire-ping") && info.stdout.contains("IP_RECEIVEPACKET"), "\(info.stdout)")
    }

    @Test func perfettoTraceHasHostsLayersAndFlowsAcrossTheWire() throws {
        let (out, dir) = try wireRun()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/trace.json"))) as? [String: Any])
        let events = try #require(json["traceEvents"] as? [[String: Any]])
        let processes = events.filter { $0["name"] as? String == "process_name" }.compactMap { ($0["args"] as? [String: Any])?["name"] as? String }
        #expect(processes == ["host a", "host b"])
        let threads = Set(events.filter { $0["name"] as? String == "thread_name" }.compactMap { ($0["args"] as? [String: Any])?["name"] as? String })
        #expect(threads.count == 4)
        let slices = events.filter { $0["ph"] as? String == "X" }
        let log = try EventLog(path: "\(dir)/events.jsonl")
        #expect(slices.count == log.events.count + (try PcapFile(path: "\(dir)/capture.pcap")).records.count)
        let flows = Dictionary(grouping: slices.filter { $0["bind_id"] != nil }, by: { $0["bind_id"] as! String })
        #expect(!flows.isEmpty)
        for (id, list) in flows {
            let sorted = list.sorted { ($0["ts"] as? Double ?? 0) < ($1["ts"] as? Double ?? 0) }
            #expect(sorted.count >= 2 && sorted.first?["flow_out"] as? Bool == true && sorted.first?["flow_in"] == nil
                    && sorted.last?["flow_in"] as? Bool == true && sorted.last?["flow_out"] == nil, "flow \(id) lacks an end")
            #expect(sorted.dropFirst().dropLast().allSatisfy { $0["flow_in"] as? Bool == true && $0["flow_out"] as? Bool == true })
        }
        // A ping request's flow crosses the wire: it starts in host a and ends in host b.
        #expect(flows.values.contains { Set($0.compactMap { $0["pid"] as? Int }) == [1, 2] })
    }

    @Test func chromiumRendersTheReport() throws {
        guard let chromium = try need("chromium") else { return }
        let (out, dir) = try wireRun()
        defer { try? FileManager.default.removeItem(atPath: out) }
        func browse(_ file: String, _ extra: [String]) throws -> Finished {
            try run(chromium, ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                               "--user-data-dir=\(out)/chromium"] + extra + ["file://\(file)"])
        }
        func consoleErrors(_ r: Finished) -> [Substring] {
            r.stderr.split(separator: "\n").filter { $0.contains("CONSOLE") || $0.contains("Uncaught") }
        }
        // The detector works: a page with a script error shows up in the log.
        let broken = "\(out)/broken.html"
        try "<html><body><script>thisFunctionDoesNotExist()</script></body></html>".write(toFile: broken, atomically: false, encoding: .utf8)
        #expect(!consoleErrors(try browse(broken, ["--dump-dom"])).isEmpty, "a script error must be caught")
        let dom = try browse("\(dir)/report.html", ["--dump-dom"])
        #expect(dom.status == 0)
        #expect(consoleErrors(dom).isEmpty, "\(consoleErrors(dom))")
        for part in ["id=\"summary\"", "id=\"verdicts\"", "id=\"placements\"", "id=\"journeys\"", "PASSED", "IP_RECEIVEPACKET", "ICMP_REPLY"] {
            #expect(dom.stdout.contains(part), "report.html lacks \(part)")
        }
        #expect(!dom.stdout.contains("http://") && !dom.stdout.contains("https://"), "the page needs no network")
        let png = "\(out)/report.png"
        let shot = try browse("\(dir)/report.html", ["--window-size=1280,2000", "--screenshot=\(png)"])
        #expect(shot.status == 0)
        // Not blank: a blank page of this size compresses to a few kilobytes.
        let size = (try? FileManager.default.attributesOfItem(atPath: png)[.size] as? Int) ?? 0
        #expect(size > 40_000, "screenshot of \(size) bytes")
    }

    /// A folder cut short exports as far as it goes; a corrupt one gives klab check's error
    /// and leaves no half-written view behind.
    @Test func exportOfBadFolders() throws {
        let (out, dir) = try wireRun()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let cut = "\(out)/cut"
        try FileManager.default.copyItem(atPath: dir, toPath: cut)
        for f in ["capture.pcapng", "trace.json", "report.html"] { try FileManager.default.removeItem(atPath: "\(cut)/\(f)") }
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: "\(cut)/events.bin"))
        try h.truncate(atOffset: 128 * 5 + 3)
        try h.close()
        let r = try klab(["export", cut])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("events.bin was cut short") && r.stdout.contains("wrote \(cut)/capture.pcapng"))
        #expect(["capture.pcapng", "trace.json", "report.html"].allSatisfy { FileManager.default.fileExists(atPath: "\(cut)/\($0)") })
        let bad = "\(out)/bad"
        try FileManager.default.copyItem(atPath: dir, toPath: bad)
        for f in ["capture.pcapng", "trace.json", "report.html"] { try FileManager.default.removeItem(atPath: "\(bad)/\(f)") }
        try Data("hello, this is not a capture at all".utf8).write(to: URL(fileURLWithPath: "\(bad)/capture.pcap"))
        let e = try klab(["export", bad]), c = try klab(["check", bad])
        #expect(e.status == 65 && c.status == 65)
        #expect(e.stderr.contains("capture.pcap: not a nanosecond pcap file") && c.stderr.contains("capture.pcap: not a nanosecond pcap file"))
        let left = try FileManager.default.contentsOfDirectory(atPath: bad)
        #expect(!left.contains { $0.hasSuffix(".partial") || $0 == "capture.pcapng" || $0 == "trace.json" || $0 == "report.html" }, "\(left)")
    }
}
