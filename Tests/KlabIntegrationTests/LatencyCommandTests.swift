import Foundation
import KlabCheck
import Testing

/// `klab latency` as a user runs it (no root), on generated results folders in klab run's
/// formats: the files it writes, its exit codes, folders cut short or corrupt.
@Suite(.scratch)
struct LatencyCommandTests {
    /// A results folder of `segments` TCP segments, each 1.5 µs from IP_RECEIVEPACKET to
    /// TCP_RECEIVEPACKET (KlabCheck's SyntheticRun). The caller removes it.
    func folder(_ segments: Int) throws -> String {
        let dir = try temporaryDirectory()
        try SyntheticRun(segments: segments).write(to: dir)
        return dir
    }

    func remove(_ dir: String) { try? FileManager.default.removeItem(atPath: dir) }

    @Test func writesTheFilesAndPrintsTheComparison() throws {
        let dir = try folder(50)
        defer { remove(dir) }
        let r = try klab(["latency", dir])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("50 IP_RECEIVEPACKET = 50 paired"))
        #expect(r.stdout.contains("p50         1,500         3,750"))
        #expect(r.stdout.contains("Linux 2.6.22") && r.stdout.contains("≈5,000 and ≈6,000"))
        for ext in ["svg", "csv", "json"] {
            #expect(FileManager.default.fileExists(atPath: "\(dir)/latency/IP_RECEIVEPACKET-TCP_RECEIVEPACKET.\(ext)"))
        }
        let j = try klab(["latency", dir, "--json", "--tail", "5500"])
        let o = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
        #expect((o?["tails"] as? [[String: Any]])?.count == 3 && (o?["cut_short"] as? [Any])?.isEmpty == true)
        let site = try klab(["latency", dir, "--to", "TCP_RECVACK@tcp_probe"])
        #expect(site.status == 0 && site.stdout.contains("50 IP_RECEIVEPACKET = 50 paired") && site.stdout.contains("TCP_RECVACK at tp_btf tcp:tcp_probe"))
    }

    @Test func exitCodesAndBadFolders() throws {
        #expect(try klab(["latency", "/nonexistent/results"]).status == 64)
        let dir = try folder(3)
        defer { remove(dir) }
        let file = try klab(["latency", "\(dir)/events.bin"])
        #expect(file.status == 64 && file.stderr.contains("klab latency reads a results folder"), "\(file.stderr)")
        let unknown = try klab(["latency", dir, "--to", "TCP_NOPE"])
        #expect(unknown.status == 64 && unknown.stderr.contains("TCP_NOPE"))

        // Cut short inside a record: read to the last whole one, and said.
        let events = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/events.bin"))
        try events.seekToEnd()
        try events.write(contentsOf: Data(repeating: 7, count: 11))
        let cut = try klab(["latency", dir])
        #expect(cut.status == 0 && cut.stdout.contains("3 IP_RECEIVEPACKET = 3 paired") && cut.stdout.contains("note: events.bin was cut short"), "\(cut.stderr)")

        // Nothing left to pair: the run's records are gone.
        try events.truncate(atOffset: 0)
        try events.close()
        let none = try klab(["latency", dir])
        #expect(none.status == 65 && none.stderr.contains("no IP_RECEIVEPACKET"), "\(none.stderr)")

        try Data("{\"klab\":".utf8).write(to: URL(fileURLWithPath: "\(dir)/run.json"))
        let corrupt = try klab(["latency", dir])
        #expect(corrupt.status == 65 && corrupt.stderr.contains("run.json: error: not a klab run header"), "\(corrupt.stderr)")
    }
}
