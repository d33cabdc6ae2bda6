// Compiles every bpf/*.bpf.c of a target with the toolchain's clang (which has the BPF
// backend) and embeds each object in the target as a hex string, so `swift build` alone
// produces a binary that carries its BPF programs. The programs' event and probe ids come
// from a header generated from KlabSchema's catalog.
import Foundation
import PackagePlugin

@main struct BPFPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let dir = target.directoryURL.appending(path: "bpf")
        let shared = context.package.directoryURL.appending(path: "Sources/CKlabLinux/include")
        let work = context.pluginWorkDirectoryURL
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path()).sorted()
        let ids = work.appending(path: "klab_ids.inc")
        let headers = files.filter { $0.hasSuffix(".h") || $0.hasSuffix(".def") }.map { dir.appending(path: $0) }
            + [shared.appending(path: "klab_event.h"), ids]
        let clang = try context.tool(named: "clang").url
        let embed = try context.tool(named: "klab-bpf-embed").url
        let generate = Command.buildCommand(
            displayName: "Generating klab_ids.inc from the schema catalog", executable: embed,
            arguments: ["ids", ids.path()], inputFiles: [embed], outputFiles: [ids])
        return [generate] + files.filter { $0.hasSuffix(".bpf.c") }.map { name in
            let stem = String(name.dropLast(".bpf.c".count))
            let out = work.appending(path: "\(stem)_bpf.swift")
            let symbol = "bpfObject_" + stem.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
            return .buildCommand(
                displayName: "Compiling BPF program \(name)",
                executable: embed,
                arguments: ["compile", clang.path(), dir.appending(path: name).path(), out.path(), symbol,
                            "-I", shared.path(), "-I", work.path(), "-I", "/usr/include/\(archTriple().triple)",
                            "-D", "__TARGET_ARCH_\(archTriple().bpf)"],
                inputFiles: [dir.appending(path: name)] + headers,
                outputFiles: [out])
        }
    }
}

/// Debian keeps <asm/types.h> under the multiarch folder, which `-target bpf` does not search;
/// bpf_tracing.h needs the architecture to read kprobe arguments from pt_regs.
private func archTriple() -> (triple: String, bpf: String) {
    #if arch(arm64)
    return ("aarch64-linux-gnu", "arm64")
    #else
    return ("x86_64-linux-gnu", "x86")
    #endif
}
