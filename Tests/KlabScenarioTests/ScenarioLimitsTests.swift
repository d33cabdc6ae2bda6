import Foundation
import Testing

@testable import KlabScenario

/// The limits of lab/SCENARIOS.md ("Limits"), in process; HostileScenarioTests runs the same
/// attacks through the klab binary and measures its memory.
struct ScenarioLimitsTests {
    func error(_ text: String) -> ScenarioError? {
        do { _ = try Scenario.parse(text, file: "t.yaml"); return nil } catch { return error }
    }

    /// One node short of the limit passes the structure check; one more fails at that node.
    @Test func nodeLimitIsExact() throws {
        // The root mapping, its key, the list: 3 nodes, then the items.
        let items = ScenarioFile.maxNodes - 3
        let ok = "k: [" + Array(repeating: "x", count: items).joined(separator: ",") + "]"
        try ScenarioFile.checkStructure(ok, file: "t.yaml")
        let over = String(ok.dropLast()) + ",y]"
        #expect(throws: ScenarioError.self) { try ScenarioFile.checkStructure(over, file: "t.yaml") }
        do { try ScenarioFile.checkStructure(over, file: "t.yaml") } catch {
            #expect(error.location == SourceLocation(file: "t.yaml", line: 1, column: ok.count + 1))  // at y
        }
    }

    /// An alias counts as everything its anchor holds, nested anchors included.
    @Test func aliasesCountWhatTheyStandFor() throws {
        // The root, key a, a's list and 10 items, key b, b's list: 15 nodes; each *a is 11 more.
        // 15 + 907 * 11 = 9,992 passes; 15 + 908 * 11 = 10,003 does not.
        func aliases(_ n: Int) -> String { "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: [" + Array(repeating: "*a", count: n).joined(separator: ",") + "]\n" }
        try ScenarioFile.checkStructure(aliases(907), file: "t.yaml")
        #expect(throws: ScenarioError.self) { try ScenarioFile.checkStructure(aliases(908), file: "t.yaml") }
    }

    @Test func aliasBombStopsAtTheAliasThatPassesTheLimit() {
        let e = error("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                      + "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n")
        // a, b, c, d stand for 10, 91, 820 and 7381 nodes; with the root and the keys, 8309
        // nodes when e's list opens: its first *d passes 10,000.
        #expect(e?.location == SourceLocation(file: "t.yaml", line: 5, column: 8))
        #expect(e?.message.contains("it stands for 7381 nodes") == true)
    }

    @Test func nestingDepth() {
        let e = error(String(repeating: "[", count: 65) + String(repeating: "]", count: 65))
        #expect(e?.location == SourceLocation(file: "t.yaml", line: 1, column: 65))
        #expect(error("k: " + String(repeating: "[", count: 63) + String(repeating: "]", count: 63))?.message.contains("nested") != true)
    }

    @Test func invalidUTF8IsPlacedInCharacters() {
        let bytes: [UInt8] = Array("name: é".utf8) + [0xC3, 0x28]
        #expect(throws: ScenarioError.self) { try ScenarioFile.text(bytes[...], file: "t.yaml") }
        do { _ = try ScenarioFile.text(bytes[...], file: "t.yaml") } catch {
            #expect(error.location == SourceLocation(file: "t.yaml", line: 1, column: 8))
            #expect(error.message == "invalid UTF-8 (byte 0xC3): a scenario is UTF-8 text")
        }
    }

    @Test func parameterSubstitutionIsBounded() {
        let big = String(repeating: "a", count: 300_000)
        let e = error("params: {X: \(big)}\nname: p\nsteps:\n" + String(repeating: "- ${X}\n", count: 20))
        // 4 MiB / 300,000 = 13.98: the 14th ${X}, on line 17.
        #expect(e?.location == SourceLocation(file: "t.yaml", line: 17, column: 3))
        #expect(e?.message == "with ${X} replaced, the scenario's text passes 4 MiB, the limit")
    }

    @Test func tooManyHosts() {
        let e = error("hosts:\n" + String(repeating: "- {}\n", count: ScenarioFile.maxHosts + 1) + "steps: []\n")
        #expect(e?.location == SourceLocation(file: "t.yaml", line: 2, column: 1))
        #expect(e?.message == "a lab has at most 250 hosts, not 251")
    }

    /// Found by lab/fuzz: libyaml put an error at the end of a file without a final newline
    /// one line past the file.
    @Test func errorAtTheEndStaysInTheFile() {
        #expect(error("params: {a: 1")?.location == SourceLocation(file: "t.yaml", line: 1, column: 14))
        #expect(error("name: x\nparams: {a: 1\n")?.location == SourceLocation(file: "t.yaml", line: 3, column: 1))
        #expect(error("---")?.location == SourceLocation(file: "t.yaml", line: 1, column: 4))  // an empty document
    }

    /// Found by lab/fuzz: \r and \r\n end lines in YAML, and errors count them so.
    @Test func carriageReturnsEndLines() {
        #expect(error("name: x\r\nsteps: []\r\nfrob: 1\r\n")?.location == SourceLocation(file: "t.yaml", line: 3, column: 1))
        #expect(error("name: x\rsteps: []\rfrob: 1")?.location == SourceLocation(file: "t.yaml", line: 3, column: 1))
        #expect(error("name: x\r\nparams: {a: 1")?.location == SourceLocation(file: "t.yaml", line: 2, column: 14))
    }
}
