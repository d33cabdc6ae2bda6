import Foundation
import Testing

/// GET /labs/{lab}/stream and klab watch: a lab's packets and events live.
extension DaemonTests {
    /// Two streams on one lab while a ping runs in it: one sees everything, the other only
    /// what its pcap-filter (echo requests) and event toggles (-ICMP_*) let through.
    @Test func liveStreamFiltersPacketsAndEventsAndEndsWithTheLab() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let lab = try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? ""
        let dir = try temporaryDirectory()

        // Refused before any streaming starts.
        let refusals: [(String, String, Int, String)] = [
            ("a bad pcap-filter", "/labs/\(lab)/stream?filter=icmp%20and%20and", 400, "pcap-filter"),
            ("an event that does not exist", "/labs/\(lab)/stream?events=-NO_SUCH_EVENT", 400, "NO_SUCH_EVENT"),
            ("an unknown parameter", "/labs/\(lab)/stream?colour=red", 400, "colour"),
            ("a bad since", "/labs/\(lab)/stream?since=yesterday", 400, "since"),
            ("no such lab", "/labs/lab-00000000/stream", 404, "no lab"),
        ]
        for (what, path, code, words) in refusals {
            let r = try d.curl(["http://klab\(path)"])
            #expect(r.code == code && r.body.contains(words), "\(what): \(r.code) \(r.body)")
        }

        let everything = try d.stream(lab, "", into: "\(dir)/everything.sse")
        let chosen = try d.stream(lab, "filter=" + "icmp[icmptype] == icmp-echo".addingPercentEncoding(withAllowedCharacters: .alphanumerics)! + "&events=-ICMP_*",
                                  into: "\(dir)/chosen.sse")
        defer { for p in [everything, chosen] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        for s in ["everything", "chosen"] {
            _ = try waitFor("the \(s) stream's header") { sse("\(dir)/\(s).sse").first?.name == "header" ? true : nil }
        }
        let ping = try d.klab(["exec", lab, "a", "--", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "198.18.0.2"])
        #expect(ping.status == 0, "\(ping.stdout)\(ping.stderr)")
        _ = try waitFor("both echo replies on the stream") {
            sse("\(dir)/everything.sse").filter { $0.name == "packet" && ($0.json["packet"] as? String ?? "").contains("echo_reply") }.count >= 2 ? true : nil
        }
        // A stream that starts now, from the lab's start, replays the ping.
        let replay = try d.curl(["--max-time", "3", "http://klab/labs/\(lab)/stream?since=start&filter=icmp"])
        #expect(replay.body.contains("echo_request") && replay.body.contains("echo_reply"), "since=start: \(replay.body.prefix(2000))")

        #expect(try d.klab(["down", lab]).status == 0)
        for p in [everything, chosen] {
            _ = try waitFor("the stream to end with the lab") { p.isRunning ? nil : true }
            #expect(p.terminationStatus == 0, "curl exited with \(p.terminationStatus)")
        }

        let all = sse("\(dir)/everything.sse"), some = sse("\(dir)/chosen.sse")
        for (name, s) in [("everything", all), ("chosen", some)] {
            #expect(s.last?.name == "end" && s.last?.json["cause"] as? String == "lab_down", "\(name) ends: \(String(describing: s.last))")
            // The shapes of journeys.jsonl and events.jsonl lines.
            for m in s where m.name == "packet" {
                #expect(m.json["frame"] is Int && m.json["t_ns"] is Int && m.json["direction"] is String && m.json["events"] is [Any], "\(m.json)")
            }
            for m in s where m.name == "event" {
                #expect(m.json["event"] is String && m.json["probe"] is String && m.json["level"] is String && m.json["t_ns"] is Int, "\(m.json)")
            }
        }
        func packets(_ s: [StreamMessage], _ words: String) -> Int { s.filter { $0.name == "packet" && ($0.json["packet"] as? String ?? "").contains(words) }.count }
        func events(_ s: [StreamMessage]) -> [String] { s.filter { $0.name == "event" }.compactMap { $0.json["event"] as? String } }
        #expect(packets(all, "echo_request") >= 2 && packets(all, "echo_reply") >= 2)
        #expect(events(all).contains { $0.hasPrefix("ICMP_") } && events(all).contains("IP_RECEIVEPACKET"), "\(events(all))")
        // The pcap-filter: the requests and nothing else; the toggles: no ICMP_ event.
        #expect(packets(some, "echo_request") == packets(all, "echo_request"), "\(some.map(\.name))")
        #expect(some.filter { $0.name == "packet" }.count == packets(some, "echo_request"))
        #expect(!events(some).contains { $0.hasPrefix("ICMP_") }, "\(events(some))")
        #expect(events(some).contains("IP_RECEIVEPACKET"), "\(events(some))")
        let replies = some.filter { m in m.name == "event" && ((m.json["packet"] as? [String: Any])?["icmp_type"] as? Int) == 0 }
        #expect(replies.isEmpty, "events of echo replies passed the filter: \(replies.map(\.json))")
    }

    /// A stream's client that goes away leaves no file open in the daemon; SIGTERM ends the
    /// streams still open and the daemon exits.
    @Test func liveStreamClientsThatGoAwayAndSigterm() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let lab = try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? ""
        let dir = try temporaryDirectory()
        let folder = "\(d.data)/labs/\(lab)/"
        let before = d.openFiles(under: folder)
        #expect(before > 0, "the lab's own writers hold its files: nothing to compare")
        let client = try d.stream(lab, "", into: "\(dir)/gone.sse")
        _ = try waitFor("the stream's header") { sse("\(dir)/gone.sse").first?.name == "header" ? true : nil }
        #expect(d.openFiles(under: folder) == before + 3, "events.bin, capture.pcap, capture.frames")
        kill(client.processIdentifier, SIGKILL)
        client.waitUntilExit()
        _ = try waitFor("the stream's files to close after its client went away") { d.openFiles(under: folder) == before ? true : nil }

        let open = try d.stream(lab, "", into: "\(dir)/open.sse")
        defer { if open.isRunning { kill(open.processIdentifier, SIGKILL) } }
        _ = try waitFor("the stream's header") { sse("\(dir)/open.sse").first?.name == "header" ? true : nil }
        kill(d.process.processIdentifier, SIGTERM)
        _ = try waitFor("the daemon to stop with a stream open") { d.running ? nil : true }
        #expect(d.process.terminationStatus == 0, "\(d.log())")
        _ = try waitFor("the stream to end") { open.isRunning ? nil : true }
        #expect(sse("\(dir)/open.sse").last?.json["cause"] as? String == "daemon_stopping", "\(sse("\(dir)/open.sse").last.map { "\($0)" } ?? "")")
    }

    /// klab watch: the timeline's lines live, JSON lines with --json, exit 0 on Ctrl-C and
    /// when the lab is taken down.
    @Test func klabWatch() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let lab = try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? ""
        let dir = try temporaryDirectory()
        let text = try d.watch([lab, "icmp", "and", "dst", "198.18.0.2"], into: "\(dir)/text")
        let json = try d.watch([lab, "--json", "--events", "IP_RECEIVEPACKET"], into: "\(dir)/json")
        defer { for p in [text, json] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        _ = try waitFor("klab watch to start") { fileText("\(dir)/text.out").contains("# watching \(lab)") ? true : nil }
        _ = try waitFor("klab watch --json to start") { fileText("\(dir)/json.err").contains("# watching \(lab)") ? true : nil }
        #expect(try d.klab(["exec", lab, "a", "--", "ping", "-n", "-c", "1", "-W", "2", "198.18.0.2"]).status == 0)
        _ = try waitFor("the echo request and its arrival in klab watch") {
            let out = fileText("\(dir)/text.out")
            return out.contains("  wire  #") && out.contains("  event IP_RECEIVEPACKET") ? true : nil
        }
        _ = try waitFor("an IP_RECEIVEPACKET in klab watch --json") { fileText("\(dir)/json.out").contains("\"IP_RECEIVEPACKET\"") ? true : nil }

        kill(json.processIdentifier, SIGINT)
        json.waitUntilExit()
        #expect(json.terminationReason == .exit && json.terminationStatus == 0, "Ctrl-C: \(json.terminationStatus) \(fileText("\(dir)/json.err"))")
        for line in fileText("\(dir)/json.out").split(separator: "\n") {
            let o = jsonObject(String(line))
            #expect(o?["frame"] is Int || o?["event"] as? String == "IP_RECEIVEPACKET", "not a packet or an IP_RECEIVEPACKET: \(line)")
        }

        #expect(try d.klab(["down", lab]).status == 0)
        _ = try waitFor("klab watch to end with the lab") { text.isRunning ? nil : true }
        #expect(text.terminationStatus == 0, "\(fileText("\(dir)/text.err"))")
        let lines = fileText("\(dir)/text.out").split(separator: "\n")
        #expect(lines.last.map(String.init) == "# lab \(lab) was taken down: the stream ends", "\(lines.last ?? "")")
        let wire = lines.filter { $0.contains("  wire  #") }
        #expect(!wire.isEmpty && wire.allSatisfy { $0.contains("198.18.0.1 > 198.18.0.2") && $0.contains("echo_request") }, "\(lines)")
        #expect(lines.contains { $0.contains("  event IP_") }, "\(lines)")
    }
}

struct StreamMessage: CustomStringConvertible {
    let name: String
    let json: [String: Any]
    var description: String { "\(name) \(json)" }
}

/// The server-sent events in `file` (what curl wrote so far).
func sse(_ file: String) -> [StreamMessage] {
    fileText(file).components(separatedBy: "\n\n").compactMap { block in
        var name = "message", data = ""
        for line in block.split(separator: "\n") {
            if line.hasPrefix("event: ") { name = String(line.dropFirst(7)) }
            if line.hasPrefix("data: ") { data += line.dropFirst(6) }
        }
        return data.isEmpty ? nil : jsonObject(data).map { StreamMessage(name: name, json: $0) }
    }
}

func fileText(_ file: String) -> String { (try? String(contentsOfFile: file, encoding: .utf8)) ?? "" }

extension DaemonProcess {
    /// curl -N on a lab's stream, its output into `file`.
    func stream(_ lab: String, _ query: String, into file: String) throws -> Process {
        try spawn("/usr/bin/curl", ["-sS", "-N", "--unix-socket", socket, "http://klab/labs/\(lab)/stream" + (query.isEmpty ? "" : "?\(query)")], into: file)
    }

    /// klab watch ARGS, its stdout into FILE.out and its stderr into FILE.err.
    func watch(_ args: [String], into file: String) throws -> Process {
        try spawn(klabBinary, ["watch"] + args, into: file + ".out", errors: file + ".err")
    }

    private func spawn(_ program: String, _ args: [String], into file: String, errors: String? = nil) throws -> Process {
        for f in [file, errors].compactMap({ $0 }) { _ = FileManager.default.createFile(atPath: f, contents: nil) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(["KLAB_SOCKET": socket]) { $1 }
        p.standardOutput = FileHandle(forWritingAtPath: file)
        p.standardError = errors.flatMap { FileHandle(forWritingAtPath: $0) } ?? FileHandle.nullDevice
        try p.run()
        return p
    }

    /// The daemon's open files under `folder`.
    func openFiles(under folder: String) -> Int {
        let dir = "/proc/\(process.processIdentifier)/fd"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { fd in
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\(fd)")) ?? "").hasPrefix(folder)
        }.count
    }
}
