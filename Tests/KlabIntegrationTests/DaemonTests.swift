import Foundation
import Testing

/// klab daemon run as users run it (`klab daemon --socket S --data D`), driven by the client
/// commands, curl and raw bytes on its socket. Privileged: skips elsewhere with the reason,
/// fails under CI=true.
@Suite(.serialized, .scratch) struct DaemonTests {
    static let twoHosts = "\(packageRoot)/lab/scenarios/wire-ping.yaml"

    @Test func labsExecCheckRunAndDown() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let up = try d.klab(["up", Self.twoHosts])
        #expect(up.status == 0, "\(up.stderr)")
        let lab = up.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(lab.hasPrefix("lab-"), "last line of klab up: \(up.stdout)")
        let ls = try d.klab(["ls"])
        #expect(ls.stdout.contains(lab) && ls.stdout.contains("a=198.18.0.1/24"), "\(ls.stdout)")

        let ping = try d.klab(["exec", lab, "a", "--", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "198.18.0.2"])
        #expect(ping.status == 0 && ping.stdout.contains("2 packets transmitted, 2 received"), "\(ping.stdout)\(ping.stderr)")
        // The exit status comes back; so does a signal's death (128+N).
        #expect(try d.klab(["exec", lab, "b", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]).status == 7)
        let both = try d.klab(["exec", lab, "b", "--", "sh", "-c", "echo out; echo err >&2"])
        #expect(both.stdout == "out\nerr\n", "\(both.stdout)")
        #expect(try d.klab(["exec", lab, "a", "--", "sh", "-c", "kill -9 $$"]).status == 128 + 9)
        // Each host is its own namespace: b has only its own address.
        let addr = try d.klab(["exec", lab, "b", "--", "ip", "-br", "-4", "addr"])
        #expect(addr.stdout.contains("198.18.0.2/24") && !addr.stdout.contains("198.18.0.1/"), "\(addr.stdout)")
        let noHost = try d.klab(["exec", lab, "c", "--", "true"])
        #expect(noHost.status == 1 && noHost.stderr.contains("no host 'c'"), "\(noHost.stderr)")

        // The ping's packets are in the lab's capture and judged.
        let check = try d.klab(["check", lab])
        #expect(check.status == 0 && check.stdout.contains("ICMP_REPLY"), "\(check.stdout)\(check.stderr)")

        let down = try d.klab(["down", lab])
        #expect(down.status == 0, "\(down.stderr)")
        #expect(try d.klab(["ls"]).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "\(d.data)/labs/\(lab)"))
        let again = try d.klab(["down", lab])
        #expect(again.status == 1 && again.stderr.contains("no lab \(lab)"), "\(again.stderr)")

        // A run through the daemon writes the results folder a local run writes.
        let out = try temporaryDirectory()
        let remote = try d.klab(["run", "--daemon", "\(packageRoot)/lab/scenarios/icmp-echo.yaml", "--out", out])
        #expect(remote.status == 0, "\(remote.stdout)\(remote.stderr)")
        #expect(remote.stdout.contains("PASS  icmp-echo"), "\(remote.stdout)")
        for f in ["run.json", "capture.pcap", "events.bin", "verdicts.json", "summary.json", "report.html"] {
            #expect(FileManager.default.fileExists(atPath: "\(out)/icmp-echo/\(f)"), "\(f) missing in \(out)/icmp-echo")
        }
        let pcap = try run("/usr/bin/tcpdump", ["-nr", "\(out)/icmp-echo/capture.pcap"])
        #expect(pcap.stdout.contains("ICMP echo reply"), "\(pcap.stdout)\(pcap.stderr)")

        // A bad scenario file: its error points into it, as klab run's would.
        let bad = try temporaryDirectory() + "/bad.yaml"
        try Data("name: bad\nhost: {name: h, address: nonsense}\nsteps: []\n".utf8).write(to: URL(fileURLWithPath: bad))
        let refused = try d.klab(["up", bad])
        #expect(refused.status == 1 && refused.stderr.contains("\(bad):2:"), "\(refused.stderr)")
    }

    /// `klab run --daemon foo.pkt`: a packetdrill script runs on the daemon as under klab run,
    /// with its -D definitions (--set) and packetdrill options (--pkt-option); only the script
    /// is sent, so files beside it are not there (its shell lines must not need them).
    @Test func packetdrillScriptsRunThroughTheDaemon() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let dir = try temporaryDirectory()
        let defaults = try String(contentsOfFile: "\(packageRoot)/lab/packetdrill/defaults.sh", encoding: .utf8)
            .split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.isEmpty }.joined(separator: "\n")
        let script = try String(contentsOfFile: "\(packageRoot)/lab/packetdrill/tcp-server.pkt", encoding: .utf8)
            .replacingOccurrences(of: "`./defaults.sh`", with: "`\(defaults)`")
        try Data(script.utf8).write(to: URL(fileURLWithPath: "\(dir)/tcp-server.pkt"))
        let out = "\(dir)/out"
        let r = try d.klab(["run", "--daemon", "\(dir)/tcp-server.pkt", "--pkt-option", "tolerance_usecs=100000", "--out", out])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("packetdrill script") && r.stdout.contains("PASS  tcp-server"), "\(r.stdout)")
        for f in ["capture.pcap", "events.bin", "verdicts.json"] {
            #expect(FileManager.default.fileExists(atPath: "\(out)/tcp-server/\(f)"), "\(f) missing in \(out)/tcp-server")
        }
        // A script that does not parse: refused at submission, pointing into the file.
        try Data("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 bogus\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/bad.pkt"))
        let bad = try d.klab(["run", "--daemon", "\(dir)/bad.pkt", "--out", out])
        #expect(bad.status == 2 && bad.stderr.contains("\(dir)/bad.pkt:3:1: error: parse error"), "\(bad.stderr)")
        // A script is run, never kept up as a lab.
        let up = try d.klab(["up", "\(dir)/tcp-server.pkt"])
        #expect(up.status == 1 && up.stderr.contains("not kept up as a lab"), "\(up.stderr)")
    }

    /// --jobs 2: two runs submitted together play side by side (from their recorded start and
    /// end), each on a lab of its own, each with a log of its own, and both pass.
    @Test func runsPlaySideBySideWithJobs() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start(extra: ["--jobs", "2"])
        defer { d.stop() }
        let body = try submissionJSON("\(packageRoot)/lab/scenarios/icmp-echo.yaml")
        let ids = try (0..<2).map { _ in
            let r = try d.curl(["-X", "POST", "--data-binary", body, "http://klab/runs"])
            return try #require(jsonObject(r.body)?["id"] as? String, "\(r.code) \(r.body)")
        }
        let runs = try ids.map { id in
            try waitFor("run \(id) to finish", seconds: 120) { () -> [String: Any]? in
                guard let r = try? d.curl(["http://klab/runs/\(id)"]), let o = jsonObject(r.body), let state = o["state"] as? String,
                      state != "queued" && state != "running" else { return nil }
                return o
            }
        }
        let stamp = ISO8601DateFormatter()
        stamp.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var spans: [(Date, Date)] = []
        for (id, r) in zip(ids, runs) {
            #expect(r["state"] as? String == "passed", "\(id): \(r)")
            let start = try #require((r["started"] as? String).flatMap(stamp.date(from:)), "\(id) has no start time: \(r)")
            let end = try #require((r["finished"] as? String).flatMap(stamp.date(from:)), "\(id) has no end time: \(r)")
            spans.append((start, end))
            // Its own log: one scenario's lines, ending as one run ends.
            let log = try d.curl(["http://klab/runs/\(id)/log"]).body
            #expect(log.components(separatedBy: "icmp-echo: PASSED").count == 2 && log.components(separatedBy: "(icmp-echo.yaml)").count == 2, "\(id)'s log:\n\(log)")
            #expect(try d.curl(["http://klab/runs/\(id)/results/verdicts.json"]).code == 200)
        }
        #expect(spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1, "the runs did not overlap: \(spans)")
    }

    /// --listen: the API on a loopback port, only with the bearer token; non-loopback addresses
    /// and a token file others can read are refused in one line.
    @Test func loopbackListenerNeedsTheToken() throws {
        guard Privileged.enabled else { return }
        let dir = try temporaryDirectory()
        for address in ["0.0.0.0:7001", "198.18.0.1:7001", "[::]:7001", "example.org:7001"] {
            let r = try klab(["daemon", "--socket", "\(dir)/no.sock", "--data", "\(dir)/no", "--listen", address])
            let lines = r.stderr.split(separator: "\n")
            #expect(r.status == 64 && lines.count == 1 && lines[0].contains("loopback only"), "--listen \(address): \(r.status) \(r.stderr)")
        }
        let loose = "\(dir)/loose.token"
        try Data("0123456789abcdef0123\n".utf8).write(to: URL(fileURLWithPath: loose))
        chmod(loose, 0o644)
        let r = try klab(["daemon", "--socket", "\(dir)/no.sock", "--data", "\(dir)/no", "--listen", "127.0.0.1:0", "--token-file", loose])
        #expect(r.status == 64 && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("chmod 600"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/no.sock") && !FileManager.default.fileExists(atPath: "\(dir)/no"))

        // A token the daemon makes: beside the socket, mode 0600, root's, gone when it stops.
        let d = try DaemonProcess.start(extra: ["--listen", "127.0.0.1:0"])
        defer { d.stop() }
        let url = try waitFor("the TCP listener") { () -> String? in
            guard let r = d.log().range(of: "also serving http://127.0.0.1:") else { return nil }
            return "http://127.0.0.1:" + d.log()[r.upperBound...].prefix { $0.isNumber }
        }
        let tokenFile = ((d.socket as NSString).deletingLastPathComponent) + "/klab.token"
        var st = stat()
        #expect(stat(tokenFile, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == 0, "\(tokenFile): mode \(String(st.st_mode & 0o777, radix: 8)) uid \(st.st_uid)")
        #expect(d.log().contains(tokenFile), "the log does not say where the token is: \(d.log())")
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)

        func curl(_ headers: [String]) throws -> Int {
            let r = try run("/usr/bin/curl", ["-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}"] + headers.flatMap { ["-H", $0] } + ["\(url)/labs"])
            return Int(r.stdout) ?? 0
        }
        #expect(try curl([]) == 401)
        #expect(try curl(["Authorization: Bearer \(token.dropLast())x"]) == 401)
        #expect(try curl(["Authorization: Bearer \(token)x"]) == 401)
        #expect(try curl(["Authorization: Basic \(token)"]) == 401)
        #expect(try curl(["Authorization: Bearer \(token)"]) == 200)

        // The client commands: --url with --token-file, KLAB_URL with KLAB_TOKEN; the socket needs none.
        let copy = "\(dir)/client.token"
        try Data(token.utf8).write(to: URL(fileURLWithPath: copy))
        let up = try klab(["up", Self.twoHosts, "--url", url, "--token-file", copy])
        #expect(up.status == 0, "\(up.stderr)")
        let lab = up.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let ls = try klab(["ls"], environment: ["KLAB_URL": url, "KLAB_TOKEN": token, "KLAB_SOCKET": "\(dir)/absent.sock"])
        #expect(ls.status == 0 && ls.stdout.contains(lab), "\(ls.stdout)\(ls.stderr)")
        let wrong = try klab(["ls"], environment: ["KLAB_URL": url, "KLAB_TOKEN": "not-the-token-at-all"])
        #expect(wrong.status == 1 && wrong.stderr == "klab: wrong token\n", "\(wrong.stderr)")
        let none = try klab(["ls", "--url", url], environment: ["KLAB_TOKEN": ""])
        #expect(none.status == 69 && none.stderr.contains("needs its bearer token"), "\(none.stderr)")
        #expect(try d.klab(["down", lab]).status == 0)

        d.stop()
        #expect(!FileManager.default.fileExists(atPath: tokenFile), "the token the daemon made outlived it")
    }

    @Test func sigtermTearsDownEveryLabAndRemovesTheSocket() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        var labs: [String] = []
        for _ in 0..<2 { labs.append(try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? "") }
        // A command left running in each lab: it holds the lab's namespace.
        let marker = "31\(Int.random(in: 1000...9999))"
        let clients = try labs.map { try d.background(["exec", $0, "a", "--", "sleep", marker]) }
        defer { for c in clients { c.terminate() } }
        let pids = try waitFor("the sleeps to start") { let p = processes(with: marker); return p.count == 2 ? p : nil }
        let namespaces = Set(pids.compactMap { netns(of: $0) })
        #expect(namespaces.count == 2)
        let cgroup = try #require(d.cgroup())

        let status = d.signal(SIGTERM)
        #expect(status == 0, "klab daemon exited with \(status): \(d.log())")
        #expect(!FileManager.default.fileExists(atPath: d.socket), "the socket file is still there")
        #expect(processes(with: marker).isEmpty, "the labs' commands still run")
        #expect(namespaces.allSatisfy { ns in !allNamespaces().contains(ns) }, "a lab's namespace is still held")
        #expect(!FileManager.default.fileExists(atPath: cgroup), "the lab cgroup \(cgroup) is still there")
        #expect(labs.allSatisfy { !FileManager.default.fileExists(atPath: "\(d.data)/labs/\($0)") })
        for c in clients { c.waitUntilExit() }
        #expect(clients.allSatisfy { $0.terminationStatus != 0 }, "an exec client did not see its command stop")
    }

    @Test func killNineThenRestartCleansUpAndMarksRunsInterrupted() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let lab = try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? ""
        let marker = "32\(Int.random(in: 1000...9999))"
        let client = try d.background(["exec", lab, "b", "--", "sleep", marker])
        defer { client.terminate() }
        let pid = try waitFor("the sleep to start") { processes(with: marker).first }
        // A run that is in progress when the daemon dies.
        let dir = try temporaryDirectory()
        let long = "\(dir)/long.yaml"
        try Data("name: long\nhost: {name: h, address: 198.18.0.1/24}\nsteps:\n  - sleep: 60s\n".utf8).write(to: URL(fileURLWithPath: long))
        let run = try d.curl(["-X", "POST", "--data-binary", try submissionJSON(long), "http://klab/runs"])
        #expect(run.code == 202, "\(run.body)")
        let id = try #require(jsonObject(run.body)?["id"] as? String)
        _ = try waitFor("the run to start") { (try? d.curl(["http://klab/runs/\(id)"]).body.contains("\"running\"")) == true ? true : nil }
        let cgroup = try #require(d.cgroup())

        d.signal(SIGKILL)
        #expect(FileManager.default.fileExists(atPath: d.socket), "a killed daemon cannot remove its socket: nothing to test")
        #expect(FileManager.default.fileExists(atPath: cgroup))
        #expect(kill(pid, 0) == 0, "the lab's command died with the daemon: nothing to test")

        let again = try DaemonProcess.start(socket: d.socket, data: d.data)
        defer { again.stop() }
        #expect(!FileManager.default.fileExists(atPath: cgroup), "the old lab cgroup is still there")
        #expect(processes(with: marker).isEmpty, "the old lab's command still runs")
        #expect(!FileManager.default.fileExists(atPath: "\(d.data)/labs/\(lab)"))
        let status = try d.curl(["http://klab/runs/\(id)"], socket: again.socket)
        #expect(status.body.contains("\"interrupted\""), "\(status.body)")
        #expect(again.log().contains("removed the socket file"), "\(again.log())")
        let ls = try again.klab(["ls"])
        #expect(ls.status == 0 && ls.stdout.isEmpty, "\(ls.stdout)\(ls.stderr)")
    }

    /// DELETE /runs/{run} (klab rm): a finished run goes from the list with its folder, a
    /// queued one out of the queue, a running one is refused (409) and kept; the next start
    /// removes a run folder a removal left half done (no status.json).
    @Test func runsAreRemovedWithTheirFolders() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        func submit(_ file: String) throws -> String {
            let r = try d.curl(["-X", "POST", "--data-binary", try submissionJSON(file), "http://klab/runs"])
            return try #require(jsonObject(r.body)?["id"] as? String, "\(r.code) \(r.body)")
        }
        func state(_ id: String) -> String? { (try? d.curl(["http://klab/runs/\(id)"])).flatMap { jsonObject($0.body)?["state"] as? String } }
        let done = try submit("\(packageRoot)/lab/scenarios/icmp-echo.yaml")
        _ = try waitFor("run \(done) to finish", seconds: 120) { state(done) == "passed" ? true : nil }
        #expect(FileManager.default.fileExists(atPath: "\(d.data)/runs/\(done)/results/verdicts.json"))

        let rm = try d.klab(["rm", done])
        #expect(rm.status == 0 && rm.stdout == "\(done) removed\n", "\(rm.stdout)\(rm.stderr)")
        #expect(try d.curl(["http://klab/runs/\(done)"]).code == 404)
        #expect(!FileManager.default.fileExists(atPath: "\(d.data)/runs/\(done)"), "its folder is still there")
        let again = try d.klab(["rm", done])
        #expect(again.status == 1 && again.stderr.contains("no run \(done)"), "\(again.stderr)")

        // One run plays (one job), the next waits in the queue.
        let dir = try temporaryDirectory()
        let long = "\(dir)/long.yaml"
        try Data("name: long\nhost: {name: h, address: 198.18.0.1/24}\nsteps:\n  - sleep: 60s\n".utf8).write(to: URL(fileURLWithPath: long))
        let playing = try submit(long)
        _ = try waitFor("run \(playing) to start") { state(playing) == "running" ? true : nil }
        let queued = try submit(long)
        #expect(state(queued) == "queued")
        let refused = try d.curl(["-X", "DELETE", "http://klab/runs/\(playing)"])
        #expect(refused.code == 409 && (jsonObject(refused.body)?["error"] as? String ?? "").contains("running"), "\(refused.code) \(refused.body)")
        #expect(state(playing) == "running" && FileManager.default.fileExists(atPath: "\(d.data)/runs/\(playing)/status.json"))
        #expect(try d.curl(["-X", "DELETE", "http://klab/runs/\(queued)"]).code == 204)
        #expect(!FileManager.default.fileExists(atPath: "\(d.data)/runs/\(queued)"))
        let info = try d.curl(["http://klab/"])
        #expect(jsonObject(info.body)?["runs_queued"] as? Int == 0, "the removed run is still queued: \(info.body)")

        // SIGTERM interrupts the running one; a folder left without status.json (a removal cut
        // short) goes at the next start; `klab rm --finished` then leaves nothing.
        d.stop()
        let stray = "\(d.data)/runs/run-0badc0de"
        try FileManager.default.createDirectory(atPath: "\(stray)/results", withIntermediateDirectories: true)
        let next = try DaemonProcess.start(socket: d.socket, data: d.data)
        defer { next.stop() }
        #expect(!FileManager.default.fileExists(atPath: stray), "\(stray) is still there")
        #expect(next.log().contains("run-0badc0de"), "\(next.log())")
        let all = try next.klab(["rm", "--finished"])
        #expect(all.status == 0 && all.stdout == "\(playing) removed\n", "\(all.stdout)\(all.stderr)")
        #expect(try next.klab(["ls", "--runs"]).stdout.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(d.data)/runs").isEmpty)
    }

    @Test func malformedRequestsGet4xxAndChangeNothing() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let dir = try temporaryDirectory()
        // A finished run whose results the file-name checks look into.
        let ok = try d.curl(["-X", "POST", "--data-binary", try submissionJSON("\(packageRoot)/lab/scenarios/icmp-echo.yaml"), "http://klab/runs"])
        let run = try #require(jsonObject(ok.body)?["id"] as? String)
        _ = try waitFor("the run to finish") { (try? d.curl(["http://klab/runs/\(run)"]).body.contains("\"passed\"")) == true ? true : nil }
        let before = try d.curl(["http://klab/runs"]).body

        let cases: [(String, [String], Int)] = [
            ("bad JSON", ["-X", "POST", "--data-binary", "{\"file\": ", "http://klab/labs"], 400),
            ("not an object", ["-X", "POST", "--data-binary", "[1, 2]", "http://klab/runs"], 400),
            ("unknown field", ["-X", "POST", "--data-binary", "{\"file\": \"a.yaml\", \"content\": \"\", \"hosts\": 3}", "http://klab/labs"], 400),
            ("missing field", ["-X", "POST", "--data-binary", "{\"file\": \"a.yaml\"}", "http://klab/runs"], 400),
            ("wrong type", ["-X", "POST", "--data-binary", "{\"file\": 3, \"content\": \"\"}", "http://klab/runs"], 400),
            ("over the limit", ["-X", "POST", "--data-binary", "@\(try bigBody(dir))", "http://klab/runs"], 413),
            ("'..' in a file name", ["--path-as-is", "http://klab/runs/\(run)/results/.."], 400),
            ("'..' percent-encoded", ["--path-as-is", "http://klab/runs/\(run)/results/%2e%2e"], 400),
            ("'/' percent-encoded", ["--path-as-is", "http://klab/runs/\(run)/results/..%2frun.json"], 400),
            ("'..' as the folder", ["--path-as-is", "http://klab/runs/\(run)/results/../status.json"], 400),
            ("no such file", ["http://klab/runs/\(run)/results/nothing"], 404),
            ("no such path", ["http://klab/nothing"], 404),
        ]
        for (what, args, want) in cases {
            let r = try d.curl(args)
            #expect(r.code == want, "\(what): \(r.code) \(r.body)")
            #expect(want == 404 || jsonObject(r.body)?["error"] is String, "\(what): the body says why: \(r.body)")
        }
        #expect(try d.curl(["http://klab/runs/\(run)/results/run.json"]).code == 200)

        // One byte a second, in the body or in the head: 408 once it is late (10 s from the head,
        // or from the first byte), and meanwhile others are served.
        let started = Date()
        let slowBody = Background { try? rawRequest(d.socket, "POST /labs HTTP/1.1\r\nHost: klab\r\nContent-Length: 200\r\n\r\n", trickle: "{\"file\": \"x.yaml\", \"content\": \"" + String(repeating: "x", count: 40)) }
        let slowHead = Background { try? rawRequest(d.socket, "", trickle: "GET /labs HTTP/1.1\r\nHost: klab\r\nX-Slow: " + String(repeating: "x", count: 40) + "\r\n\r\n") }
        for _ in 0..<3 { #expect(try d.curl(["http://klab/"]).code == 200, "the daemon stalls behind a slow client") }
        #expect(!slowBody.done && !slowHead.done, "the slow clients were done before the others were served: nothing tested")
        for (what, slow) in [("body", slowBody), ("head", slowHead)] {
            let answer = slow.value ?? ""
            #expect(answer.hasPrefix("HTTP/1.1 408") && answer.contains("within 10 s"), "the client with a slow \(what) got: \(answer)")
        }
        // Both were cut off near their 10 s, well before the 30 s rawRequest waits (or the 60 s idle timeout).
        #expect(Date().timeIntervalSince(started) < 25, "the slow clients were cut off after \(Date().timeIntervalSince(started)) s")

        #expect(try d.curl(["http://klab/labs"]).body == "[]\n")
        #expect(try d.curl(["http://klab/runs"]).body == before)
        #expect(d.running, "the daemon died: \(d.log())")
    }

    @Test func clientsThatGoAway() throws {
        guard Privileged.enabled else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        let lab = try d.klab(["up", Self.twoHosts]).stdout.split(separator: "\n").last.map(String.init) ?? ""
        // exec: the command stops with its client.
        let marker = "33\(Int.random(in: 1000...9999))"
        let client = try d.background(["exec", lab, "a", "--", "sleep", marker])
        _ = try waitFor("the sleep to start") { processes(with: marker).first }
        kill(client.processIdentifier, SIGKILL)
        client.waitUntilExit()
        _ = try waitFor("the command to stop after its client went away") { processes(with: marker).isEmpty ? true : nil }
        // run: it goes on, and its results are there afterwards.
        let out = try temporaryDirectory()
        let runner = try d.background(["run", "--daemon", "\(packageRoot)/lab/scenarios/icmp-echo.yaml", "--out", out])
        let id = try waitFor("the run to be queued") { (try? d.curl(["http://klab/runs"]).body).flatMap { b in jsonObject("{\"r\":\(b)}").flatMap { ($0["r"] as? [[String: Any]])?.first?["id"] as? String } } }
        kill(runner.processIdentifier, SIGKILL)
        runner.waitUntilExit()
        _ = try waitFor("the run to finish without its client") { (try? d.curl(["http://klab/runs/\(id)"]).body.contains("\"passed\"")) == true ? true : nil }
        #expect(try d.curl(["http://klab/runs/\(id)/results/run.json"]).code == 200)
        #expect(try d.klab(["down", lab]).status == 0)
    }

    @Test func anOutsiderGetsOneLineNamingTheSocketAndGroup() throws {
        guard Privileged.enabled else { return }
        // The socket's group: one that exists on Debian (daemon), given with --group; the
        // outsider is nobody:nogroup.
        let d = try DaemonProcess.start(group: "daemon")
        defer { d.stop() }
        var st = stat()
        #expect(stat(d.socket, &st) == 0 && st.st_mode & 0o777 == 0o660, "mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect(getgrgid(st.st_gid).map { String(cString: $0.pointee.gr_name) } == "daemon")
        let env = ["KLAB_SOCKET": d.socket]
        let outsider = try run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", klabBinary, "ls"], environment: env)
        #expect(outsider.status == 69, "\(outsider.stderr)")
        let lines = outsider.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains(d.socket) && lines[0].contains("'daemon'"), "\(outsider.stderr)")
        let member = try run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--groups=daemon", "--", klabBinary, "ls"], environment: env)
        #expect(member.status == 0, "a member of the socket's group: \(member.stderr)")
        let none = try klab(["ls", "--socket", "\(d.socket).absent"])
        #expect(none.status == 69 && none.stderr.contains("no klab daemon at \(d.socket).absent"), "\(none.stderr)")
    }

    /// schemathesis (PyPI; lab/setup installs it in /opt/klab-schemathesis) against the
    /// daemon through a loopback port (socat), checking every answer against openapi.yaml.
    @Test func answersConformToTheOpenAPIDocument() throws {
        guard Privileged.enabled, Privileged.has("/usr/bin/socat", from: "socat"),
              Privileged.has("/opt/klab-schemathesis/bin/st", from: "schemathesis (PyPI; lab/setup)") else { return }
        let d = try DaemonProcess.start()
        defer { d.stop() }
        // A lab, so that its routes answer more than 404.
        _ = try d.klab(["up", Self.twoHosts])
        let port = Int.random(in: 20000...29999)
        let proxy = Process()
        proxy.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
        proxy.arguments = ["TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "UNIX-CONNECT:\(d.socket)"]
        try proxy.run()
        // SIGKILL: socat inherits the test runner's blocked SIGTERM.
        defer { kill(proxy.processIdentifier, SIGKILL); proxy.waitUntilExit() }
        // schemathesis keeps a cache in .schemathesis/ of the folder it runs in (the package's).
        let cache = "\(packageRoot)/.schemathesis"
        let hadCache = FileManager.default.fileExists(atPath: cache)
        defer { if !hadCache { try? FileManager.default.removeItem(atPath: cache) } }
        let st = try run("/opt/klab-schemathesis/bin/st", [
            "run", "\(packageRoot)/Sources/KlabDaemon/openapi.yaml", "--url", "http://127.0.0.1:\(port)",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples", "30", "--workers", "1", "--phases", "examples,coverage,fuzzing", "--wait-for-schema", "5",
        ], environment: ["NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""])
        #expect(st.status == 0, "schemathesis found problems:\n\(st.stdout.suffix(6000))\(st.stderr.suffix(2000))")
        #expect(d.running, "the daemon died: \(d.log())")
    }
}

/// A `klab daemon` of the test's own: its socket and data in a scratch folder.
final class DaemonProcess: @unchecked Sendable {
    let socket: String, data: String, logFile: String
    let process: Process

    static func start(socket: String? = nil, data: String? = nil, group: String = "klab", extra: [String] = []) throws -> DaemonProcess {
        let dir = try temporaryDirectory()
        return try DaemonProcess(
            socket: socket ?? "\(dir)/klab.sock", data: data ?? "\(dir)/data", log: "\(dir)/daemon-\(UUID().uuidString.prefix(4)).log", group: group,
            extra: extra)
    }

    private init(socket: String, data: String, log: String, group: String, extra: [String]) throws {
        (self.socket, self.data, self.logFile) = (socket, data, log)
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: klabBinary)
        process.arguments = ["daemon", "--socket", socket, "--data", data, "--group", group] + extra
        process.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        let out = FileHandle(forWritingAtPath: log)
        process.standardOutput = out
        process.standardError = out
        try process.run()
        _ = try waitFor("klab daemon to serve \(socket) (log: \(log))", seconds: 60) {
            if !process.isRunning { throw DaemonTestError("klab daemon exited with \(process.terminationStatus): \(self.log())") }
            return self.log().contains("serving \(socket)") ? true : nil
        }
    }

    var running: Bool { process.isRunning }
    func log() -> String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Sends `sig` and waits for the exit; its status (or 128+N for a signal's death).
    @discardableResult
    func signal(_ sig: Int32) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, sig) }
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    func stop() { if process.isRunning { signal(SIGTERM) } }

    /// The daemon's lab cgroup (from /proc/PID/cgroup).
    func cgroup() -> String? {
        guard let root = mountPoint("cgroup2"),
              let line = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/cgroup", encoding: .utf8))?
                .split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        let path = root + line.dropFirst(3)
        return path.contains("/klab-") ? path : nil
    }

    func klab(_ args: [String]) throws -> Finished {
        try KlabIntegrationTests.klab(args, environment: ["KLAB_SOCKET": socket])
    }

    /// A client command left running.
    func background(_ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: klabBinary)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(["KLAB_SOCKET": socket]) { $1 }
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// curl on the socket: the status and the body.
    func curl(_ args: [String], socket: String? = nil) throws -> (code: Int, body: String) {
        let r = try run("/usr/bin/curl", ["-sS", "--max-time", "30", "--unix-socket", socket ?? self.socket, "-w", "\n%{http_code}"] + args)
        let code = Int(r.stdout.split(separator: "\n").last ?? "") ?? 0
        let body = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().joined(separator: "\n")
        return (code, body)
    }
}

struct DaemonTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Polls `probe` every 50 ms until it gives a value, for up to `seconds`.
func waitFor<T>(_ what: String, seconds: Double = 30, _ probe: () throws -> T?) throws -> T {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if let v = try probe() { return v }
        usleep(50_000)
    }
    throw DaemonTestError("timed out after \(Int(seconds)) s waiting for \(what)")
}

/// Processes whose command line holds `marker` as an argument.
func processes(with marker: String) -> [pid_t] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    var out: [pid_t] = []
    for name in names {
        guard let pid = pid_t(name), let cmd = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { continue }
        let args: [String] = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if let first = args.first, first.hasSuffix("sleep"), args.contains(marker) { out.append(pid) }
    }
    return out
}

func netns(of pid: pid_t) -> UInt64? {
    var st = stat()
    return stat("/proc/\(pid)/ns/net", &st) == 0 ? UInt64(st.st_ino) : nil
}

/// The network namespaces some process is in.
func allNamespaces() -> Set<UInt64> {
    Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0).flatMap(netns(of:)) })
}

func mountPoint(_ type: String) -> String? {
    let text = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        if f.count > 2 && f[2] == type { return String(f[1]) }
    }
    return nil
}

func jsonObject(_ text: String) -> [String: Any]? {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
}

/// The API's submission body for a scenario file.
func submissionJSON(_ file: String) throws -> String {
    let content = try String(contentsOfFile: file, encoding: .utf8)
    let data = try JSONSerialization.data(withJSONObject: ["file": (file as NSString).lastPathComponent, "content": content])
    return String(decoding: data, as: UTF8.self)
}

/// A body just over the daemon's 1 MiB limit, as a file for curl.
func bigBody(_ dir: String) throws -> String {
    let path = "\(dir)/big.json"
    let body = "{\"file\": \"big.yaml\", \"content\": \"" + String(repeating: "x", count: (1 << 20) + 1) + "\"}"
    try Data(body.utf8).write(to: URL(fileURLWithPath: path))
    return path
}

/// Sends `head` at once, then `trickle` one byte a second, over the Unix socket; returns what
/// the daemon answered (read until it closes, or 30 s).
func rawRequest(_ socket: String, _ head: String, trickle: String) throws -> String {
    let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw DaemonTestError("socket: \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in socket.utf8.enumerated() { p[i] = b } }
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard rc == 0 else { throw DaemonTestError("connect(\(socket)): \(errno)") }
    var tv = timeval(tv_sec: 0, tv_usec: 1000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = head.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    var answer = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    let end = Date().addingTimeInterval(30)
    var next = trickle.utf8.makeIterator()
    while Date() < end {
        if var b = next.next() { _ = send(fd, &b, 1, Int32(MSG_NOSIGNAL)) }
        // Read for a second before the next byte.
        let second = Date().addingTimeInterval(1)
        while Date() < second {
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0 { answer += buf[0..<n] } else if n == 0 { return String(decoding: answer, as: UTF8.self) } else { usleep(10_000) }
        }
        if !answer.isEmpty && String(decoding: answer, as: UTF8.self).contains("\r\n\r\n") { break }
    }
    return String(decoding: answer, as: UTF8.self)
}

/// A value computed on another thread (`value` waits for it).
final class Background<T>: @unchecked Sendable {
    private var result: T?
    private let ready = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> T) {
        DispatchQueue.global().async { [self] in
            result = body()
            ready.signal()
        }
    }
    /// Whether the value is there, without waiting for it.
    var done: Bool {
        guard ready.wait(timeout: .now()) == .success else { return false }
        ready.signal()
        return true
    }
    var value: T {
        ready.wait()
        ready.signal()
        return result!
    }
}
