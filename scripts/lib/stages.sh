# Shared by the staged reproduce scripts (source it; it defines functions only).

# check_stages NAME "ALL STAGES" "WANTED STAGES": exit 2 with one line on an unknown stage.
check_stages() {
    local name="$1" all="$2" stage
    for stage in $3; do
        [[ " $all " == *" $stage "* ]] || { echo "$name: unknown stage '$stage'; stages are: $all" >&2; exit 2; }
    done
}

# check_imagenet NAME IMAGENET "WANTED STAGES" "STAGES WITHOUT DATA": exit 2 with one line when a wanted
# stage needs ImageNet and IMAGENET lacks train/ or val/.
check_imagenet() {
    local name="$1" imagenet="$2" wanted="$3" free="$4" stage needs=0
    for stage in $wanted; do [[ " $free " == *" $stage "* ]] || needs=1; done
    if [ "$needs" = 1 ] && { [ ! -d "$imagenet/train" ] || [ ! -d "$imagenet/val" ]; }; then
        echo "$name: ImageNet not found at $imagenet (needs train/<class>/* and val/<class>/*): pass --imagenet DIR or set MOONLIT_DATA=DIR holding imagenet/, or run --smoke or --stages \"$free\"" >&2
        exit 2
    fi
}
