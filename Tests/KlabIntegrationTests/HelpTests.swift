import Foundation
import Testing

/// `--help` reads as written at any width: the parser wraps nothing klab wrapped already, so no
/// sentence breaks after one word, and every line fits the terminal.
struct HelpTests {
    static let commands: [[String]] = [[], ["run"], ["validate"], ["trace"], ["schema"], ["check"], ["export"], ["compare-sites"],
                                       ["journey"], ["latency"], ["bench"], ["bench", "tun-pingpong"], ["bench", "tracer"], ["bench", "check"],
                                       ["report"], ["watch"], ["rm"]]

    @Test(arguments: commands, [60, 80, 120])
    func helpFitsAndFlows(_ command: [String], _ columns: Int) throws {
        let r = try run(klabBinary, command + ["--help"], environment: ["COLUMNS": "\(columns)"])
        #expect(r.status == 0)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        // USAGE is one line by the parser's design.
        let long = lines.filter { $0.count > columns && !$0.hasPrefix("USAGE:") }
        #expect(long.isEmpty, "lines over \(columns) columns: \(long)")
        // A ragged rewrap leaves a short line in the middle of a paragraph: a line of at most
        // two words with prose before and after it.
        for i in lines.indices.dropFirst().dropLast() where !lines[i].isEmpty && !lines[i].hasPrefix(" ") && lines[i].split(separator: " ").count <= 2 {
            let around = [lines[i - 1], lines[i + 1]]
            #expect(!around.allSatisfy { !$0.isEmpty && !$0.hasPrefix(" ") && !$0.hasSuffix(":") }, "ragged: \(lines[i - 1]) / \(lines[i]) / \(lines[i + 1])")
        }
    }
}
