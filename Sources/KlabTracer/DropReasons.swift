import CLibbpf

/// The running kernel's drop reasons (enum skb_drop_reason, read from its BTF: the values
/// differ between kernel versions), for SKB_DROP records.
public enum DropReasons {
    /// Value → name without the SKB_DROP_REASON_ prefix; empty when the kernel has no BTF
    /// for the enum.
    public static func names() -> [Int32: String] {
        guard let btf = btf__load_vmlinux_btf(), libbpf_get_error(UnsafeRawPointer(btf)) == 0 else { return [:] }
        defer { btf__free(btf) }
        let id = btf__find_by_name_kind(btf, "skb_drop_reason", UInt32(BTF_KIND_ENUM))
        guard id > 0, let t = btf__type_by_id(btf, UInt32(id)) else { return [:] }
        var out: [Int32: String] = [:]
        let values = btf_enum(t)!
        for i in 0..<Int(btf_vlen(t)) {
            guard let name = btf__name_by_offset(btf, values[i].name_off) else { continue }
            out[values[i].val] = String(cString: name).replacingOccurrences(of: "SKB_DROP_REASON_", with: "")
        }
        return out
    }
}
