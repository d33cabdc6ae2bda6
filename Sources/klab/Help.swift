import Foundation

/// Help text written for the source (wrapped by hand, readable in the editor) reflowed for the
/// terminal, so the argument parser has nothing left to wrap and no line breaks mid-sentence.
///
/// - Lines at the left margin form paragraphs and are joined; a line starting `- ` starts a
///   list item whose more-indented lines continue it (hanging indent).
/// - An indented line followed by more-indented lines (a definition list) is one item,
///   wrapped at the continuation's indent.
/// - Other indented lines (examples, commands) stay as written.
func prose(_ text: String) -> String {
    let width = max(40, min(helpWidth - 1, 100))  // the parser breaks a line of the full width
    var out: [String] = []
    enum Kind { case paragraph, listItem, verbatim }
    // The item being gathered: its first line as written, the words that continue it, and
    // the indent of its later lines.
    var first = "", kind = Kind.verbatim, indent = 0, words: [Substring] = [], hanging = 0
    func pad(_ n: Int) -> String { String(repeating: " ", count: n) }
    func flush() {
        guard !first.isEmpty else { return }
        defer { first = ""; words = [] }
        var line = first
        // A first line too long is broken at its last space that fits (keeping the spacing
        // inside it, as a definition list's); a verbatim line without continuation stays.
        while line.count > width && (kind != .verbatim || !words.isEmpty) {
            let chars = Array(line)
            guard let cut = (hanging + 1..<width).reversed().first(where: { chars[$0] == " " && chars[$0 - 1] != " " }) else { break }
            out.append(String(chars[..<cut]))
            line = pad(hanging) + String(chars[(cut + 1)...]).drop { $0 == " " }
        }
        for w in words {
            if line.count + 1 + w.count > width {
                out.append(line)
                line = pad(hanging) + w
            } else {
                line += " " + w
            }
        }
        out.append(line)
    }
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        let lead = line.prefix { $0 == " " }.count
        let isListItem = line.dropFirst(lead).hasPrefix("- ")
        let continues: Bool
        switch kind {
        case _ where first.isEmpty: continues = false
        case .paragraph: continues = lead == 0 && !isListItem
        case .listItem: continues = lead > indent
        case .verbatim: continues = lead > indent && !first.hasSuffix("\\")
        }
        if line.allSatisfy({ $0 == " " }) {
            flush()
            out.append("")
        } else if continues {
            if kind == .verbatim && words.isEmpty { hanging = lead }
            words += line.split(separator: " ")
        } else {
            flush()
            first = String(line)
            indent = lead
            kind = isListItem ? .listItem : lead == 0 ? .paragraph : .verbatim
            hanging = kind == .listItem ? lead + 2 : lead
        }
    }
    flush()
    return out.joined(separator: "\n")
}

/// The width the argument parser wraps at: COLUMNS, else the terminal's, else 80.
private let helpWidth: Int = {
    if let c = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), c > 0 { return c }
    var w = winsize()
    if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 0 { return Int(w.ws_col) }
    return 80
}()
