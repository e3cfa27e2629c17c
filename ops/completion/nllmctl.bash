# nllmctl.bash -- bash completion for nllmctl (installed by meson into
# bash-completion's completionsdir). Commands and each command's flags come
# from `nllmctl __complete commands|flags CMD` (read from nllmctl's own help
# texts, so they never go stale); job and checkpoint names from the daemon
# (`nllmctl list --json`, `nllmctl checkpoints NAME --json`), quietly none
# when no daemon answers. Uses the --socket/--connect/--token-file already
# on the line.

# The names in nllmctl's pretty JSON: "name" keys of the list's objects
# (six spaces in), one a line.
_nllmctl_json_names()
{
    sed -n 's/^      "name": "\(.*\)",\{0,1\}$/\1/p' | sed 's/",$//; s/"$//'
}

_nllmctl()
{
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=""
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    local prog=${COMP_WORDS[0]}
    local -a conn=()
    local cmd="" i w
    local -a pos=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --socket | --connect | --token-file)
            conn+=("$w" "${COMP_WORDS[i + 1]}")
            ((i++))
            ;;
        --socket=* | --connect=* | --token-file=*) conn+=("$w") ;;
        --data | --val | --config | --epochs | --batch | --lr | --seq-len | --vocab | \
            --embed-dim | --hidden-dim | --context-dim | --layers | --dropout | --patience | \
            --save-every | --keep | --clip | --seed | --tokenizer | --device | --init-from | \
            --threads | --precision | --set | --limit | --checkpoint | --prompt | --tokens | \
            --temperature | --output | -o)
            ((i++))
            ;;
        -*) ;;
        *)
            if [[ -z $cmd ]]; then cmd=$w; else pos+=("$w"); fi
            ;;
        esac
    done

    # a flag's value
    case $prev in
    --data | --val | --config | --token-file | --socket | --output | -o)
        COMPREPLY=($(compgen -f -- "$cur"))
        return
        ;;
    --tokenizer)
        COMPREPLY=($(compgen -W "word byte" -- "$cur"))
        return
        ;;
    --precision)
        COMPREPLY=($(compgen -W "fp32 tf32 bf16" -- "$cur"))
        return
        ;;
    --clip)
        COMPREPLY=($(compgen -W "reference none" -- "$cur"))
        return
        ;;
    --device)
        COMPREPLY=($(compgen -W "cpu cuda:0 cuda:1 cuda:2 cuda:3" -- "$cur"))
        return
        ;;
    --checkpoint)
        [[ -n ${pos[0]} ]] && COMPREPLY=($(compgen -W "$("$prog" "${conn[@]}" checkpoints \
            "${pos[0]}" --json 2>/dev/null </dev/null | _nllmctl_json_names)" -- "$cur"))
        return
        ;;
    --connect | --epochs | --batch | --lr | --seq-len | --vocab | --embed-dim | --hidden-dim | \
        --context-dim | --layers | --dropout | --patience | --save-every | --keep | --seed | \
        --init-from | --threads | --set | --limit | --prompt | --tokens | --temperature)
        return
        ;;
    esac

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--socket --connect --token-file --json --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$("$prog" __complete commands 2>/dev/null)" -- "$cur"))
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$("$prog" __complete flags "$cmd" 2>/dev/null)" -- "$cur"))
        return
    fi
    case $cmd in
    help)
        ((${#pos[@]} == 0)) &&
            COMPREPLY=($(compgen -W "$("$prog" __complete commands 2>/dev/null)" -- "$cur"))
        ;;
    status | watch | pause | resume | extend | stop | verify | checkpoints | history | plot | \
        events | rm | remove | generate)
        if ((${#pos[@]} == 0)); then
            COMPREPLY=($(compgen -W "$("$prog" "${conn[@]}" list --json 2>/dev/null </dev/null |
                _nllmctl_json_names)" -- "$cur"))
        elif [[ $cmd == resume && ${#pos[@]} == 1 ]]; then
            COMPREPLY=($(compgen -W "$("$prog" "${conn[@]}" checkpoints "${pos[0]}" --json \
                2>/dev/null </dev/null | _nllmctl_json_names)" -- "$cur"))
        fi
        ;;
    device)
        if ((${#pos[@]} == 0)); then
            COMPREPLY=($(compgen -W "reset" -- "$cur"))
        elif ((${#pos[@]} == 1)); then
            COMPREPLY=($(compgen -W "cpu cuda:0 cuda:1 cuda:2 cuda:3" -- "$cur"))
        fi
        ;;
    esac
}
complete -F _nllmctl nllmctl
