"""The functions a feature file may call, by name.

sqlglot parses the functions it knows into typed classes and everything else into ``exp.Anonymous``.
Typed functions are allowed except the few in ``DENIED_TYPED`` that read files or advance sequences.
An anonymous function must be named here: an engine's long tail of built-ins includes file readers
(``read_text``, ``pg_read_file``), side effects (``lo_from_bytea``, ``nextval``, ``set_config``), remote
access (``dblink``) and introspection of the server (``current_setting``, ``getenv``), and a name
missing from this list is refused rather than guessed safe.

The lists are deliberately explicit and lowercase; add a name only after checking, on every supported
engine, that the function is pure: it reads nothing but its arguments and changes nothing.
"""

from __future__ import annotations

from sqlglot import exp

# Typed sqlglot functions that reach outside the query's own rows.
DENIED_TYPED: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name) for name in ("ReadCSV", "ReadParquet", "ToFile", "NextValueFor") if hasattr(exp, name)
)

# Set-returning functions allowed in FROM / JOIN / LATERAL: they compute rows from their arguments.
TABLE_FUNCTIONS = frozenset({
    "unnest", "generate_series", "range", "generate_subscripts", "explode", "posexplode", "explode_outer",
    "generate_date_array", "generate_timestamp_array", "regexp_split_to_table", "string_to_table",
    "json_each", "json_each_text", "jsonb_each", "jsonb_each_text", "json_array_elements",
    "json_array_elements_text", "jsonb_array_elements", "jsonb_array_elements_text",
})

_MATH = """
abs acos acosh add asin asinh atan atan2 atanh bit_count cbrt ceil ceiling cos cosh cot degrees div
divide even exp factorial fdiv floor fmod gamma gcd greatest_common_divisor isfinite isinf isnan lcm
least_common_multiple lgamma ln log log10 log2 mod multiply nextafter pi pow power radians round
round_even roundbankers sign signbit sin sinh sqrt subtract tan tanh trunc width_bucket xor
"""
_STRING = """
ascii bar base64 bin binom bit_length bit_position btrim chr concat concat_ws contains convert_from
convert_to damerau_levenshtein decode editdist3 encode ends_with format format_bytes
formatreadabledecimalsize formatreadablesize from_base64 from_binary from_hex grade_up hamming hash
hex ilike_escape initcap instr jaccard jaro_similarity jaro_winkler_similarity left left_grapheme
length length_grapheme levenshtein like_escape lower lpad ltrim md5 md5_number mismatches
nfc_normalize octet_length ord overlay position prefix printf quote_ident quote_literal regexp_count
regexp_escape regexp_extract regexp_extract_all regexp_full_match regexp_instr regexp_like
regexp_match regexp_matches regexp_replace regexp_split_to_array regexp_substr repeat replace
reverse right right_grapheme rpad rtrim set_bit sha1 sha256 split split_part starts_with str_split
string_split string_to_array strip_accents strlen strpos substr substring substring_grapheme suffix
to_base to_base64 to_hex translate trim unbin unhex upper url_decode url_encode
"""
_TIME = """
age ago century clock_timestamp current_date current_time current_timestamp date_add date_bin
date_diff date_part date_sub date_trunc datediff datepart datesub datetrunc day dayname dayofmonth
dayofweek dayofyear days_in_month decade epoch epoch_ms epoch_ns epoch_us era extract
get_current_timestamp hour isodow isoyear julian justify_days justify_hours justify_interval
last_day localtime localtimestamp make_date make_interval make_time make_timestamp make_timestamp_ms
make_timestamp_ns make_timestamptz microsecond millennium millisecond minute month monthname
nanosecond normalized_interval now quarter second statement_timestamp strftime strptime time_bucket
timezone timezone_hour timezone_minute to_centuries to_char to_date to_days to_decades to_hours
to_microseconds to_millennia to_milliseconds to_minutes to_months to_number to_quarters to_seconds
to_timestamp to_weeks to_years transaction_timestamp try_strptime week weekday weekofyear year
yearweek
"""
_STRUCTURED = """
array_aggr array_aggregate array_append array_apply array_cat array_concat array_contains
array_cosine_distance array_cosine_similarity array_cross_product array_dims array_distance
array_dot_product array_extract array_fill array_filter array_grade_up array_has array_has_all
array_has_any array_indexof array_inner_product array_length array_lower array_ndims
array_negative_dot_product array_negative_inner_product array_pop_back array_pop_front
array_position array_positions array_prepend array_push_back array_push_front array_reduce
array_remove array_replace array_resize array_reverse array_select array_slice array_sort
array_to_json array_to_string array_transform array_unique array_upper array_value array_where
array_zip cardinality element_at enum_code enum_first enum_last enum_range equi_width_bins flatten
from_json from_json_strict json_array json_array_length json_build_array json_build_object
json_contains json_deep_merge json_exists json_extract json_extract_path json_extract_path_text
json_extract_string json_insert json_keys json_merge_patch json_object json_pretty json_quote
json_replace json_structure json_transform json_transform_strict json_type json_typeof json_valid
json_value jsonb_array_length jsonb_build_array jsonb_build_object jsonb_extract_path
jsonb_extract_path_text jsonb_typeof list_aggr list_aggregate list_any_value list_append list_apply
list_approx_count_distinct list_avg list_bit_and list_bit_or list_bit_xor list_bool_and list_bool_or
list_cat list_concat list_contains list_cosine_distance list_cosine_similarity list_count
list_distance list_dot_product list_element list_entropy list_extract list_filter list_first
list_grade_up list_has list_has_all list_has_any list_histogram list_indexof list_inner_product
list_intersect list_kurtosis list_kurtosis_pop list_last list_mad list_median list_mode list_pack
list_position list_prepend list_product list_reduce list_resize list_reverse list_reverse_sort
list_select list_sem list_skewness list_slice list_sort list_stddev_pop list_stddev_samp
list_string_agg list_sum list_transform list_unique list_value list_var_pop list_var_samp list_where
list_zip map map_concat map_contains map_contains_entry map_contains_value map_entries map_extract
map_extract_value map_from_entries map_keys map_values row row_to_json struct_concat struct_contains
struct_extract struct_extract_at struct_has struct_indexof struct_insert struct_keys struct_pack
struct_position struct_update struct_values to_json to_jsonb union_extract union_tag union_value
uuid_extract_timestamp uuid_extract_version
"""
_LOGIC = """
coalesce greatest if ifnull least nullif num_nonnulls num_nulls
"""
_AGGREGATE = """
aggregate any_value approx_count_distinct approx_quantile arbitrary arg_max arg_max_null
arg_max_nulls_last arg_min arg_min_null arg_min_nulls_last argmax argmin array_agg avg bit_and
bit_or bit_xor bitstring_agg bool_and bool_or corr count count_if count_star covar_pop covar_samp
entropy every favg first fsum geomean geometric_mean histogram histogram_exact json_agg
json_group_array json_group_object json_object_agg jsonb_agg jsonb_object_agg kahan_sum kurtosis
kurtosis_pop last list lttb mad max max_by mean median min min_by mode percentile_cont
percentile_disc product quantile quantile_cont quantile_disc regr_avgx regr_avgy regr_count
regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy reservoir_quantile sem skewness stddev
stddev_pop stddev_samp string_agg sum sumkahan var_pop var_samp variance wavg weighted_avg
"""
_WINDOW = """
cume_dist dense_rank fill first_value lag last_value lead nth_value ntile percent_rank rank
rank_dense row_number
"""

ALLOWED_FUNCTIONS = frozenset(
    " ".join((_MATH, _STRING, _TIME, _STRUCTURED, _LOGIC, _AGGREGATE, _WINDOW)).split()
) | TABLE_FUNCTIONS
